"""The scheduler: each step, hand out a token budget so that computed tokens catch up with known ones.

There is no separate prefill phase. Running requests go first (a decode needs 1 token, an unfinished
prompt chunk needs the rest of its prompt, capped by the budget), then waiting requests in arrival
order, their prompts chunked to fit. A prefix-cache hit simply starts a request with more tokens
computed. When blocks run out, the newest running request is preempted: its blocks are freed and it
goes back to the front of the queue to be recomputed later (its prefix is usually still cached).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from npu_serve.engine.kv_cache_manager import KVCacheManager
from npu_serve.engine.request import Request, RequestStatus
from npu_serve.outputs import FinishReason


@dataclass
class ScheduledRequest:
    request: Request
    start: int  # num_computed_tokens before this step: position of the first new token
    num_new_tokens: int
    block_ids: list[int]
    sample: bool  # after this chunk every known token is computed, so one new token is sampled


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest]  # decodes (1 new token) first, then prefills/chunks
    num_batched_tokens: int
    preempted: list[str] = field(default_factory=list)
    # Requests that ended since the last step: the worker drops their per-request state.
    finished_ids: list[str] = field(default_factory=list)

    @property
    def num_decodes(self) -> int:
        return sum(1 for s in self.scheduled if s.num_new_tokens == 1)


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int
    num_blocks: int
    enable_prefix_caching: bool = True


class Scheduler:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.kv = KVCacheManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._finished_ids: list[str] = []
        # Statistics, in tokens and events, for tests, benchmarks and /metrics.
        self.num_preemptions = 0
        self.num_prefix_hit_tokens = 0

    # -- intake and exits -------------------------------------------------------------------------
    def add_request(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def finish_request(self, request_id: str, reason: FinishReason, stop_reason: int | str | None = None) -> Request | None:
        """End a request in any state and free everything it holds. Unknown ids are ignored."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        if req.status == RequestStatus.RUNNING:
            self.running.remove(req)
        elif not req.is_finished:
            self.waiting.remove(req)
        self.kv.free(req)
        if not req.is_finished:
            req.finish(reason, stop_reason)
        self._finished_ids.append(request_id)
        return req

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- the step -------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        chosen: list[tuple[Request, int, int]] = []  # (request, start, num_new)
        preempted: list[str] = []

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.kv.allocate_slots(req, num_new):
                victim = self.running.pop()  # the newest request gives way
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is req:
                    break
            if req.status != RequestStatus.RUNNING:
                break  # req itself was preempted: everything after it is gone too
            chosen.append((req, req.num_computed_tokens, num_new))
            budget -= num_new
            i += 1

        # Admit waiting requests only in a step that preempted nobody (else they would thrash).
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            hits, num_hit = self.kv.get_computed_blocks(req)
            num_new = min(req.num_tokens - num_hit, budget)
            if not self.kv.allocate_slots(req, num_new, hits):
                break
            self.waiting.popleft()
            req.num_computed_tokens = num_hit
            if req.num_cached_tokens < 0:
                req.num_cached_tokens = num_hit
            self.num_prefix_hit_tokens += num_hit
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            chosen.append((req, num_hit, num_new))
            budget -= num_new

        chosen.sort(key=lambda c: c[2] != 1)  # stable: decodes first, each group in running order
        scheduled = [
            ScheduledRequest(req, start, n, self.kv.block_ids(req.request_id), start + n == req.num_tokens)
            for req, start, n in chosen
        ]
        finished, self._finished_ids = self._finished_ids, []
        return SchedulerOutput(scheduled, self.config.max_num_batched_tokens - budget, preempted, finished)

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def update(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Apply a finished step: advance computed counts, append sampled tokens, end requests that hit
        EOS, a stop token, max_tokens or the context limit. Returns the requests that got a token."""
        progressed = []
        for s in out.scheduled:
            req = s.request
            if req.is_finished:
                continue
            req.num_computed_tokens += s.num_new_tokens
            if not s.sample:
                continue
            token = sampled[req.request_id]
            req.output_token_ids.append(token)
            progressed.append(req)
            reason, stop_reason = self._check_stop(req, token)
            if reason is not None:
                self.finish_request(req.request_id, reason, stop_reason)
        return progressed

    def _check_stop(self, req: Request, token: int) -> tuple[FinishReason | None, int | None]:
        p = req.sampling_params
        n_out = req.num_output_tokens
        if n_out >= p.min_tokens:
            if token in p.stop_token_ids:
                return FinishReason.STOP, token
            if not p.ignore_eos and token in req.eos_token_ids:
                return FinishReason.STOP, None
        if p.max_tokens is not None and n_out >= p.max_tokens:
            return FinishReason.LENGTH, None
        if req.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH, None
        return None, None
