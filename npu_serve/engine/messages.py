"""The step's messages: what the scheduler hands the workers (`SchedulerOutput`) and what comes back
(`RunnerOutput`). Plain typed data, no live engine objects, so a step can be pickled and sent to
another process (tensor-parallel ranks today, a separate engine process later). Torch-free.

What travels every step, and why (sizes and times: scripts/bench_messages.py, README "Tensor
parallelism"):

- Every rank runs the forward, so every rank gets, per scheduled request (`ScheduledRequest`): its
  id, the position of its first new token, the new token ids, its WHOLE block table, whether its last
  position is sampled and how many of its positions keep logits for prompt logprobs. Block tables go
  whole, not as diffs: workers then keep no per-request state, so preemption, forks, copy-on-write
  and beam drops can never leave a worker with a stale table (which would compute wrong KV silently).
  A decode step at batch 64 with 32-640-token contexts (1,332 block ids) pickles to ~9.5 KB in
  ~0.1-0.2 ms (decoding the same), against forwards of tens of milliseconds; diff-only tables would
  make it ~5.7 KB (at Ascend's block size of 128: 6.2 KB against 5.7 KB).
- Only rank 0 samples. What its sampler needs (`SamplingRequest`: params, the seed offset of the
  sequence, token histories for penalties, prompt-logprob targets, the followers that fork off a
  leader) sits in `SchedulerOutput.sampling`, which never leaves rank 0's process:
  `for_workers()` drops it before the broadcast (pickled, it would triple the message: ~29 KB, as
  every row carries its SamplingParams). Histories are copied only for requests whose penalties or
  min_tokens read them. Should the engine ever run apart from rank 0, params would go once per
  request (vLLM v1's new-request data) and only histories per step.
- Per-request state a runner may keep: rank 0 keeps seeded generators (and the logprob-ranked
  best_of params) by request id and drops them when the id appears in `finished_ids`. No other rank
  keeps anything per request, so a client that goes away frees its blocks on every rank as soon as
  rank 0's scheduler frees them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

from npu_serve.sampling_params import SamplingParams


@dataclass(slots=True)
class ScheduledRequest:
    """One request's share of a step's packed batch (every rank gets it)."""

    request_id: str
    start: int  # position of the first new token (= tokens with KV already computed)
    token_ids: list[int]  # the new tokens, positions start .. start + len - 1
    block_ids: list[int]  # the request's whole block table
    sample: bool  # after this chunk every known token is computed: its last position is sampled
    # Positions start .. start + n - 1 of this chunk whose logits are kept for prompt logprobs.
    prompt_logprob_rows: int = 0

    @property
    def num_new_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(slots=True)
class SamplingRequest:
    """What rank 0's sampler needs for one sequence in this step (never broadcast)."""

    request_id: str
    params: SamplingParams
    output_index: int = 0  # child i of an n > 1 request draws with seed + i
    # Token histories, only where a penalty or min_tokens reads them (else empty).
    prompt_token_ids: Sequence[int] = ()
    output_token_ids: Sequence[int] = ()
    # Prompt tokens start + 1 .. that the chunk's prompt_logprob_rows predict, in order.
    prompt_logprob_targets: list[int] = field(default_factory=list)
    # Followers that sample their first token from this (leader's) row, then fork from it.
    fork_children: list[SamplingRequest] = field(default_factory=list)


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest]  # decodes (1 new token) first, then prefills/chunks
    num_batched_tokens: int
    preempted: list[str] = field(default_factory=list)
    # Requests that ended since the last step: runners drop their per-request state.
    finished_ids: list[str] = field(default_factory=list)
    # Copy-on-write block copies (src, dst), applied to every layer before this step's forward.
    block_copies: list[tuple[int, int]] = field(default_factory=list)
    # Rank 0 only: by request id, for each scheduled request that samples or keeps prompt logits.
    sampling: dict[str, SamplingRequest] = field(default_factory=dict)

    @property
    def num_decodes(self) -> int:
        return sum(1 for s in self.scheduled if len(s.token_ids) == 1)

    def for_workers(self) -> SchedulerOutput:
        """The part every rank needs: everything but `sampling`."""
        return replace(self, sampling={})


@dataclass(slots=True)
class TokenLogprobs:
    """Logprobs at one position: the chosen token's, its rank (1 = best), and the top alternatives
    (most likely first, `params.logprobs` of them)."""

    token_id: int
    logprob: float
    rank: int
    top_ids: list[int]
    top_logprobs: list[float]


@dataclass(slots=True)
class RunnerOutput:
    """Rank 0's answer to a step."""

    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)
    # Beam-search requests: their top (token, logprob) candidates instead of a sampled token.
    beam_candidates: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    # prompt_logprobs requests: (chunk start, logprobs of prompt tokens start + 1, start + 2, ...).
    prompt_logprobs: dict[str, tuple[int, list[TokenLogprobs]]] = field(default_factory=dict)
