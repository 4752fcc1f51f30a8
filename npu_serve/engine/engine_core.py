"""EngineCore: the synchronous heart, `schedule -> execute -> update`, one step at a time.

Torch-free: the workers are reached through the `Executor` protocol, with plain messages
(engine/messages.py) in and out. Both front ends drive it: `LLM` calls `step()` in a loop on the
caller's thread, `AsyncEngine` on its own thread.

Failures: an ordinary exception from `execute` (a device fault in one forward) fails the requests of
that step and the engine goes on. `EngineDeadError` (a tensor-parallel rank died, a collective timed
out: the ranks can no longer agree) is not caught here; it ends the engine.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from npu_serve.engine.beam_search import BeamGroup, BeamSearch, beam_stop_ids
from npu_serve.engine.client import EngineStats
from npu_serve.engine.detokenizer import IncrementalDetokenizer
from npu_serve.engine.output_processor import OutputProcessor, ParentState, child_id
from npu_serve.engine.messages import RunnerOutput, SchedulerOutput
from npu_serve.engine.request import Request
from npu_serve.engine.scheduler import Scheduler, SchedulerConfig
from npu_serve.errors import EngineDeadError, InvalidParameter, PromptTooLong
from npu_serve.outputs import FinishReason, RequestOutput
from npu_serve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class Executor(Protocol):
    """Runs steps on the workers (one in-process runner, or every tensor-parallel rank)."""

    def execute(self, so: SchedulerOutput) -> RunnerOutput:
        """Run one step. Raises EngineDeadError when the workers can no longer run steps."""

    def watch(self, on_dead: Callable[[str], None]) -> None:
        """Call `on_dead(reason)`, from any thread, if the workers die between or during steps."""

    def shutdown(self) -> None:
        """Stop the workers and free what they hold. Idempotent."""


class EngineCore:
    def __init__(self, scheduler_config: SchedulerConfig, executor: Executor, tokenizer,
                 eos_token_ids: frozenset[int]):
        self.scheduler = Scheduler(scheduler_config)
        self.executor = executor
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.outputs = OutputProcessor(tokenizer)
        self.max_model_len = scheduler_config.max_model_len
        self.num_step_errors = 0  # steps whose forward raised (for /metrics)
        self.num_steps = 0

    # -- intake -----------------------------------------------------------------------------------
    def make_parent(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> ParentState:
        """Validate and tokenize a request (on the caller's thread); raises before anything is queued."""
        if isinstance(prompt, str):
            text: str | None = prompt
            token_ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        else:
            text, token_ids = None, list(prompt)
            vocab = len(self.tokenizer)
            if any(not isinstance(t, int) or t < 0 or t >= vocab for t in token_ids):
                raise InvalidParameter("prompt", f"prompt token ids must be integers in [0, {vocab})")
        if not token_ids:
            raise InvalidParameter("prompt", "the prompt is empty")
        if len(token_ids) > self.max_model_len:
            raise PromptTooLong(self.max_model_len, len(token_ids), params.max_tokens or 0, param="prompt")
        params.all_stop_token_ids = set(self.eos_token_ids) | set(params.stop_token_ids)
        if params.use_beam_search:
            leader = Request(child_id(request_id, 0), token_ids, params, self.eos_token_ids, parent_id=request_id)
            max_new = self.max_model_len - len(token_ids)
            if params.max_tokens is not None:
                max_new = min(max_new, params.max_tokens)
            search = BeamSearch(params.best_of, params.length_penalty, params.early_stopping, max(1, max_new),
                                beam_stop_ids(params, self.eos_token_ids), params.min_tokens)
            beam = BeamGroup(request_id, leader, search, params.n)
            return ParentState(request_id, text, token_ids, params, [], [], beam=beam)
        # best_of sequences are generated (n of them returned); child i draws with seed + i.
        children = [
            Request(child_id(request_id, i), token_ids, params, self.eos_token_ids, output_index=i, parent_id=request_id)
            for i in range(params.best_of)
        ]
        detoks = [IncrementalDetokenizer(self.tokenizer, token_ids, params) for _ in children]
        return ParentState(request_id, text, token_ids, params, children, detoks)

    def add(self, parent: ParentState) -> None:
        self.outputs.add(parent)
        if parent.beam is not None:
            self.scheduler.add_beam_group(parent.beam)
        else:  # the first child computes the prompt once; the others fork from it (scheduler.py)
            self.scheduler.add_request(parent.children[0], parent.children[1:])

    def abort(self, request_id: str) -> RequestOutput | None:
        parent = self.outputs.parents.get(request_id)
        if parent is None:
            return None
        self._end(parent, FinishReason.ABORT)
        return self.outputs.snapshot(parent)

    def _end(self, parent: ParentState, reason: FinishReason) -> None:
        if parent.beam is not None and not parent.finished:
            parent.ended = reason
        for req in parent.live_requests():
            self.scheduler.finish_request(req.request_id, reason)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def stats(self, tensor_parallel_size: int = 1) -> EngineStats:
        """Safe to call from another thread while the engine steps: every number may be a step old."""
        s = self.scheduler
        queued = list(s.waiting)  # one C-level copy under the GIL: safe while the engine thread runs
        return EngineStats(running=len(s.running), waiting=len(queued), kv_blocks_used=s.kv.num_used_blocks(),
                           kv_blocks_total=s.kv.pool.num_usable_blocks, num_preemptions=s.num_preemptions,
                           prefix_hit_tokens=s.num_prefix_hit_tokens, num_steps=self.num_steps,
                           tensor_parallel_size=tensor_parallel_size,
                           waiting_tokens=sum(r.num_tokens - r.num_computed_tokens for r in queued),
                           prefix_query_tokens=s.num_prefix_query_tokens, num_step_errors=self.num_step_errors)

    # -- the step ---------------------------------------------------------------------------------
    def step(self, want_snapshots: bool = True) -> list[RequestOutput]:
        """Run one step. Returns snapshots of every request that progressed (or only of finished ones
        when want_snapshots is False, which saves the offline API building unused snapshots)."""
        so = self.scheduler.schedule()
        if not so.scheduled:
            self.executor.execute(so)  # still lets the worker drop state of finished requests
            return []
        self.num_steps += 1
        try:
            result = self.executor.execute(so)
        except EngineDeadError:
            raise
        except Exception as exc:  # a failed forward fails the requests in it, not the server
            logger.exception("engine step failed")
            self.num_step_errors += 1
            return self._fail(so, f"{type(exc).__name__}: {exc}")
        # Before update(): a request that ends in it leaves the scheduler, its parent stays until reported.
        for rid, (start, logprobs) in result.prompt_logprobs.items():
            parent = self._parent_of(rid)
            if parent is not None:
                self.outputs.on_prompt_logprobs(parent, start, logprobs)
        progressed = self.scheduler.update(so, result.sampled, result.beam_candidates)
        touched: dict[str, ParentState] = {}
        for group in self.scheduler.finished_beam_groups:
            parent = self.outputs.parents.get(group.request_id)
            if parent is not None:
                touched[parent.request_id] = parent
        self.scheduler.finished_beam_groups.clear()
        for req in progressed:
            parent = self.outputs.parents.get(req.parent_id)
            if parent is None:
                continue
            stop = self.outputs.on_token(req, result.logprobs.get(req.request_id))
            if stop is not None and not req.is_finished:
                self.scheduler.finish_request(req.request_id, FinishReason.STOP, stop)
            elif stop is not None and req.finish_reason == FinishReason.LENGTH:
                req.finish_reason, req.stop_reason = FinishReason.STOP, stop  # the stop string came first
            touched[parent.request_id] = parent
        return [self.outputs.snapshot(p) for p in touched.values() if want_snapshots or p.finished]

    def _parent_of(self, request_id: str) -> ParentState | None:
        req = self.scheduler.requests.get(request_id)
        return self.outputs.parents.get(req.parent_id) if req is not None else None

    def _fail(self, so: SchedulerOutput, message: str) -> list[RequestOutput]:
        parents: dict[str, ParentState] = {}
        for s in so.scheduled:
            parent = self._parent_of(s.request_id)
            if parent is not None:
                parents[parent.request_id] = parent
        out = []
        for parent in parents.values():
            parent.error = message
            self._end(parent, FinishReason.ERROR)
            out.append(self.outputs.snapshot(parent))
        return out
