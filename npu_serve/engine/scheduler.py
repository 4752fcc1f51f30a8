"""The scheduler: each step, hand out a token budget so that computed tokens catch up with known ones.

There is no separate prefill phase. Running requests go first (a decode needs 1 token, an unfinished
prompt chunk needs the rest of its prompt, capped by the budget), then waiting requests in arrival
order, their prompts chunked to fit. A prefix-cache hit simply starts a request with more tokens
computed. When blocks run out, the newest running request is preempted: its blocks are freed and it
goes back to the front of the queue to be recomputed later (its prefix is usually still cached).

Groups: the n (best_of) sequences of one sampling request prefill their prompt once. The first
child leads; the others wait as its followers, and in the step that samples the leader's first
token they sample theirs from the same logits and are forked from it (shared blocks, see
KVCacheManager.fork). Beam search groups (engine/beam_search.py) fork and drop beams every step;
a beam that has its candidates waits, parked (nothing to compute), until its siblings have theirs.

`schedule()` returns the step as a plain message (engine/messages.py) and keeps its own record of
the live requests in it; `update()` applies the sampled tokens of that step.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from npu_serve.engine.kv_cache_manager import KVCacheManager
from npu_serve.engine.messages import SamplingRequest, ScheduledRequest, SchedulerOutput
from npu_serve.engine.request import Request, RequestStatus
from npu_serve.outputs import FinishReason

if TYPE_CHECKING:
    from npu_serve.engine.beam_search import BeamGroup


@dataclass
class _Scheduled:
    """The scheduler's own (live) record of one scheduled request, kept until `update`."""

    request: Request
    num_new_tokens: int
    sample: bool
    fork_children: list[Request] = field(default_factory=list)


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
        self._followers: dict[str, list[Request]] = {}  # leader id -> children waiting to fork
        self._leader_of: dict[str, str] = {}
        self.beam_groups: dict[str, BeamGroup] = {}  # beam request id -> its group
        self.finished_beam_groups: list[BeamGroup] = []  # ended in update(); the engine drains it
        self._last: tuple[SchedulerOutput, list[_Scheduled]] | None = None  # the step awaiting update()
        # Statistics, in tokens and events, for tests, benchmarks and /metrics.
        self.num_preemptions = 0
        self.num_prefix_hit_tokens = 0
        self.num_prefix_query_tokens = 0  # tokens looked up; hits are a part of them (as vLLM counts)

    # -- intake and exits -------------------------------------------------------------------------
    def add_request(self, req: Request, followers: list[Request] = ()) -> None:
        """Queue `req`; `followers` (same prompt and params) fork from it once its prompt is computed."""
        for r in (req, *followers):
            if r.request_id in self.requests:
                raise ValueError(f"request id {r.request_id!r} is already in use")
        for r in (req, *followers):
            self.requests[r.request_id] = r
        if followers:
            self._followers[req.request_id] = list(followers)
            self._leader_of.update((f.request_id, req.request_id) for f in followers)
        self.waiting.append(req)

    def add_beam_group(self, group: BeamGroup) -> None:
        self.add_request(group.live[0])
        self.beam_groups[group.live[0].request_id] = group

    def fork_request(self, parent: Request, child: Request) -> None:
        """Make `child` a copy of `parent` (tokens, computed count, blocks by reference) and queue it
        where the parent is: running when it holds computed blocks, else waiting (to recompute)."""
        child.output_token_ids = list(parent.output_token_ids)
        child.block_hashes = list(parent.block_hashes)
        child.num_cached_tokens = parent.num_cached_tokens
        self.requests[child.request_id] = child
        if parent.status == RequestStatus.RUNNING:
            self.kv.fork(parent, child)
            child.num_computed_tokens = parent.num_computed_tokens
            child.status = RequestStatus.RUNNING
            self.running.append(child)
        else:
            child.status = RequestStatus.PREEMPTED
            self.waiting.appendleft(child)

    def finish_request(self, request_id: str, reason: FinishReason, stop_reason: int | str | None = None) -> Request | None:
        """End a request in any state and free everything it holds. Unknown ids are ignored."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        leader = self._leader_of.pop(request_id, None)
        if leader is not None:  # a follower still waiting to fork
            self._followers[leader].remove(req)
        elif req.status == RequestStatus.RUNNING:
            self.running.remove(req)
        elif not req.is_finished:
            self.waiting.remove(req)
        # A leader that ends before forking lets its followers compute their prompt themselves.
        for follower in self._followers.pop(request_id, []):
            del self._leader_of[follower.request_id]
            self.waiting.append(follower)
        self.beam_groups.pop(request_id, None)
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
            if num_new == 0:  # a parked beam, waiting for its siblings' candidates
                i += 1
                continue
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
        if not preempted:
            budget = self._admit(budget, chosen)
        # Parked beams hold blocks and seats while their siblings wait: when nothing else can run,
        # they give way (their candidates are kept; they recompute later).
        while not chosen and self.waiting and self._preempt_parked(preempted):
            budget = self._admit(budget, chosen)

        chosen.sort(key=lambda c: c[2] != 1)  # stable: decodes first, each group in running order
        scheduled, live, sampling = [], [], {}
        for req, start, n in chosen:
            sample = start + n == req.num_tokens
            forks = list(self._followers.get(req.request_id, ())) if sample else []
            msg = ScheduledRequest(req.request_id, start, req.token_slice(start, start + n),
                                   self.kv.block_ids(req.request_id), sample, _prompt_logprob_rows(req, start, n))
            scheduled.append(msg)
            live.append(_Scheduled(req, n, sample, forks))
            if sample or msg.prompt_logprob_rows:
                sampling[req.request_id] = _sampling_request(req, forks, start, msg.prompt_logprob_rows)
        finished, self._finished_ids = self._finished_ids, []
        out = SchedulerOutput(scheduled, self.config.max_num_batched_tokens - budget, preempted, finished,
                              self.kv.take_copies(), sampling)
        self._last = (out, live)
        return out

    def _admit(self, budget: int, chosen: list[tuple[Request, int, int]]) -> int:
        while self.waiting and budget > 0 and self._seats_for(self.waiting[0]):
            req = self.waiting[0]
            hits, num_hit = self.kv.get_computed_blocks(req)
            queried = self.kv.enable_prefix_caching
            if req.sampling_params.prompt_logprobs is not None and req.num_output_tokens == 0:
                hits, num_hit, queried = [], 0, False  # every prompt position must run through lm_head
            num_new = min(req.num_tokens - num_hit, budget)
            if not self.kv.allocate_slots(req, num_new, hits):
                break
            self.waiting.popleft()
            req.num_computed_tokens = num_hit
            if req.num_cached_tokens < 0:  # scheduled for the first time
                req.num_cached_tokens = num_hit
                req.first_scheduled_time = time.monotonic()
            self.num_prefix_hit_tokens += num_hit
            self.num_prefix_query_tokens += req.num_tokens if queried else 0
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            chosen.append((req, num_hit, num_new))
            budget -= num_new
        return budget

    def _preempt_parked(self, preempted: list[str]) -> bool:
        for req in reversed(self.running):
            if req.num_computed_tokens == req.num_tokens:
                self.running.remove(req)
                self._preempt(req)
                # To the back: the siblings it waits for must compute first (its candidates are kept).
                self.waiting.remove(req)
                self.waiting.append(req)
                preempted.append(req.request_id)
                return True
        return False

    def _seats_for(self, req: Request) -> bool:
        """Room under max_num_seqs for `req` and the sequences it will fork into (an empty engine
        always admits, so a group wider than max_num_seqs still runs)."""
        group = 1 + len(self._followers.get(req.request_id, ()))
        beams = self.beam_groups.get(req.request_id)
        if beams is not None and not beams.started:
            group = beams.width
        return not self.running or len(self.running) + group <= self.config.max_num_seqs

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def update(self, out: SchedulerOutput, sampled: dict[str, int],
               beam_candidates: dict[str, list[tuple[int, float]]] | None = None) -> list[Request]:
        """Apply the step `out` (the last one scheduled): advance computed counts, append sampled
        tokens, end requests that hit EOS, a stop token, max_tokens or the context limit, fork
        followers, advance beam groups. Returns the (sampling) requests that got a token, forked
        followers included."""
        if self._last is None or self._last[0] is not out:
            raise ValueError("update() must follow the schedule() that produced this output, once")
        live = self._last[1]
        self._last = None
        progressed = []
        groups: dict[int, BeamGroup] = {}
        for s in live:
            req = s.request
            if req.is_finished:
                continue
            req.num_computed_tokens += s.num_new_tokens
            if not s.sample:
                continue
            group = self.beam_groups.get(req.request_id)
            if group is not None:
                group.add_candidates(req, beam_candidates[req.request_id])
                groups[id(group)] = group
                continue
            for child in s.fork_children:
                if child.is_finished:
                    continue
                self._followers[req.request_id].remove(child)
                del self._leader_of[child.request_id]
                self.fork_request(req, child)
                self._append(child, sampled[child.request_id], progressed)
            self._followers.pop(req.request_id, None)
            self._append(req, sampled[req.request_id], progressed)
        for group in groups.values():
            if group.ready():
                group.advance(self)
                if group.done:
                    self.finished_beam_groups.append(group)
        return progressed

    def _append(self, req: Request, token: int, progressed: list[Request]) -> None:
        req.output_token_ids.append(token)
        progressed.append(req)
        reason, stop_reason = self._check_stop(req, token)
        if reason is not None:
            self.finish_request(req.request_id, reason, stop_reason)

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


def _prompt_logprob_rows(req: Request, start: int, num_new: int) -> int:
    """How many positions of this chunk predict a prompt token for prompt_logprobs: position p
    predicts token p + 1; the last prompt position predicts the first output token (sampled)."""
    if req.sampling_params.prompt_logprobs is None:
        return 0
    return max(0, min(start + num_new, req.num_prompt_tokens - 1) - start)


def _sampling_request(req: Request, forks: list[Request], start: int, prompt_rows: int) -> SamplingRequest:
    p = req.sampling_params
    targets = req.prompt_token_ids[start + 1 : start + 1 + prompt_rows] if prompt_rows else []
    return SamplingRequest(req.request_id, p, req.output_index, *_histories(req), targets,
                           [SamplingRequest(c.request_id, p, c.output_index, *_histories(c)) for c in forks])


def _histories(req: Request) -> tuple[list[int] | tuple, list[int] | tuple]:
    """Copies of the token histories the sampler reads for this request's params (empty otherwise)."""
    p = req.sampling_params
    needs_output = p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
    prompt = list(req.prompt_token_ids) if p.repetition_penalty != 1.0 else ()
    output = list(req.output_token_ids) if needs_output or p.min_tokens > 0 else ()
    return prompt, output
