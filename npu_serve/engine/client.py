"""EngineClient: what the HTTP server may ask of an engine, and nothing more. Torch-free.

`server/` depends on this protocol, not on AsyncEngine, so the engine can move behind another
transport (its own process, a remote node) without the server changing. AsyncEngine implements it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol, runtime_checkable

from npu_serve.outputs import RequestOutput
from npu_serve.sampling_params import SamplingParams


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load, read without stopping the engine loop (so counts may be one
    step old). Counters (`num_*`, `prefix_hit_tokens`) only grow."""

    running: int  # sequences with KV blocks, being computed
    waiting: int  # sequences queued (new, or preempted and waiting to be recomputed)
    kv_blocks_used: int
    kv_blocks_total: int  # usable blocks (the null block excluded)
    num_preemptions: int
    prefix_hit_tokens: int  # prompt tokens whose KV came from the prefix cache
    num_steps: int  # forward steps run
    tensor_parallel_size: int = 1
    # Added by issue 13 (admission and /metrics); optional, so an engine that cannot tell leaves them.
    waiting_tokens: int = 0  # tokens still to compute of the waiting sequences (the admission budget)
    prefix_query_tokens: int = 0  # prompt tokens looked up in the prefix cache (hits are part of them)
    num_step_errors: int = 0  # forward steps that raised (their requests failed; the engine went on)
    step_seconds_buckets: tuple[tuple[float, int], ...] = ()  # (upper bound, cumulative count); inf last
    step_seconds_sum: float = 0.0

    @property
    def kv_cache_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0


@runtime_checkable
class EngineClient(Protocol):
    tokenizer: Any  # a transformers tokenizer: chat templates, prompt encoding, logprob token text
    model_name: str
    max_model_len: int

    def generate(self, prompt: str | list[int], sampling_params: SamplingParams,
                 request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Cumulative snapshots of one request until it finishes. Closing the iterator early aborts
        the request. Raises EngineDeadError if the engine has stopped."""

    def abort(self, request_id: str) -> None:
        """End the request and free everything it holds; non-blocking; unknown ids are ignored."""

    @property
    def is_healthy(self) -> bool:
        """True while the engine can make progress."""

    @property
    def dead_reason(self) -> str | None:
        """Why the engine stopped (None while healthy)."""

    def stats(self) -> EngineStats:
        """A snapshot of the engine's load (see EngineStats)."""

    async def shutdown(self) -> None:
        """Stop the engine loop and its workers; requests still waiting get EngineDeadError."""
