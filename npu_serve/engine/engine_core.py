"""EngineCore: the synchronous heart, `schedule -> execute -> update`, one step at a time.

Torch-free: the worker is reached through the `Executor` protocol (anything with
`execute(SchedulerOutput) -> RunnerOutput`). Both front ends drive it: `LLM` calls `step()` in a loop
on the caller's thread, `AsyncEngine` on its own thread.
"""

from __future__ import annotations

import logging
from typing import Protocol

from npu_serve.engine.detokenizer import IncrementalDetokenizer
from npu_serve.engine.output_processor import OutputProcessor, ParentState, child_id
from npu_serve.engine.request import Request
from npu_serve.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from npu_serve.errors import InvalidParameter, PromptTooLong
from npu_serve.outputs import FinishReason, RequestOutput
from npu_serve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class Executor(Protocol):
    def execute(self, so: SchedulerOutput): ...


class EngineCore:
    def __init__(self, scheduler_config: SchedulerConfig, executor: Executor, tokenizer,
                 eos_token_ids: frozenset[int]):
        self.scheduler = Scheduler(scheduler_config)
        self.executor = executor
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.outputs = OutputProcessor(tokenizer)
        self.max_model_len = scheduler_config.max_model_len

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
        if params.use_beam_search:
            raise InvalidParameter("use_beam_search", "beam search is not supported yet")
        if params.best_of != params.n:
            raise InvalidParameter("best_of", "best_of different from n is not supported yet")
        params.all_stop_token_ids = set(self.eos_token_ids) | set(params.stop_token_ids)
        children = [
            Request(child_id(request_id, i), token_ids, params, self.eos_token_ids, output_index=i, parent_id=request_id)
            for i in range(params.n)
        ]
        detoks = [IncrementalDetokenizer(self.tokenizer, token_ids, params) for _ in children]
        return ParentState(request_id, text, token_ids, params, children, detoks)

    def add(self, parent: ParentState) -> None:
        self.outputs.add(parent)
        for child in parent.children:
            self.scheduler.add_request(child)

    def abort(self, request_id: str) -> RequestOutput | None:
        parent = self.outputs.parents.get(request_id)
        if parent is None:
            return None
        for child in parent.children:
            self.scheduler.finish_request(child.request_id, FinishReason.ABORT)
        return self.outputs.snapshot(parent)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    # -- the step ---------------------------------------------------------------------------------
    def step(self, want_snapshots: bool = True) -> list[RequestOutput]:
        """Run one step. Returns snapshots of every request that progressed (or only of finished ones
        when want_snapshots is False, which saves the offline API building unused snapshots)."""
        so = self.scheduler.schedule()
        if not so.scheduled:
            self.executor.execute(so)  # still lets the worker drop state of finished requests
            return []
        try:
            result = self.executor.execute(so)
        except Exception as exc:  # a failed forward fails the requests in it, not the server
            logger.exception("engine step failed")
            return self._fail(so, f"{type(exc).__name__}: {exc}")
        progressed = self.scheduler.update(so, result.sampled)
        touched: dict[str, ParentState] = {}
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

    def _fail(self, so: SchedulerOutput, message: str) -> list[RequestOutput]:
        parents: dict[str, ParentState] = {}
        for s in so.scheduled:
            parent = self.outputs.parents.get(s.request.parent_id)
            if parent is not None:
                parents[parent.request_id] = parent
        out = []
        for parent in parents.values():
            parent.error = message
            for child in parent.children:
                self.scheduler.finish_request(child.request_id, FinishReason.ERROR)
            out.append(self.outputs.snapshot(parent))
        return out
