"""A request as the engine tracks it: its tokens, how many have KV computed, its blocks, its end.

Invariant (the scheduler's one rule): `num_computed_tokens <= num_tokens`; each step the scheduler
hands out new tokens so that computed catches up with known. When they are equal after a step,
the step sampled one more token, so `num_tokens` grows by one.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from npu_serve.outputs import FinishReason
from npu_serve.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    """Lifecycle, in order. Every status past PREEMPTED is final."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED = 3

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = field(default_factory=time.monotonic)
    # The index of this sequence among its parent's n outputs (n > 1 fans out into child requests).
    output_index: int = 0
    parent_id: str | None = None

    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1  # prefix-cache hit at first schedule; -1 until scheduled
    num_preemptions: int = 0
    first_scheduled_time: float | None = None  # monotonic, like arrival_time; for the queue time
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    # Chained block hashes of this request's full blocks, extended as tokens arrive (prefix cache).
    block_hashes: list[bytes] = field(default_factory=list)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def token_slice(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + output, without building the whole list."""
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p : end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - p]

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def finish(self, reason: FinishReason, stop_reason: int | str | None = None) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
        self.stop_reason = stop_reason
