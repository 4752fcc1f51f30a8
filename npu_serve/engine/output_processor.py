"""Turns engine progress into RequestOutput snapshots: detokenizes, applies stop strings, and fans the
n child sequences of one request back into one output.

A user request with n outputs (best_of of them generated) runs as best_of child Requests (ids
`<id>#<i>`) that fork from the first after one prompt computation (scheduler.py). With best_of > n
the n children with the highest cumulative logprob are returned, best first, once all are done (as
vLLM 0.6.0 ranks them). A beam-search request runs as a BeamGroup and is reported once it is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from npu_serve.engine.beam_search import BeamGroup, Hypothesis
from npu_serve.engine.detokenizer import IncrementalDetokenizer
from npu_serve.engine.messages import TokenLogprobs
from npu_serve.engine.request import Request
from npu_serve.outputs import CompletionOutput, FinishReason, Logprob, RequestOutput
from npu_serve.sampling_params import SamplingParams


def child_id(request_id: str, index: int) -> str:
    return f"{request_id}#{index}"


@dataclass(eq=False)
class ParentState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[Request]
    detoks: list[IncrementalDetokenizer]
    logprobs: list[list[dict[int, Logprob]]] = field(default_factory=list)
    cumulative_logprob: list[float] = field(default_factory=list)
    error: str | None = None
    beam: BeamGroup | None = None
    ended: FinishReason | None = None  # a beam request ended from outside (abort, error)
    # prompt_logprobs[j] for prompt token j (None for j = 0), filled as prompt chunks run.
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None

    @property
    def finished(self) -> bool:
        if self.beam is not None:
            return self.beam.done or self.ended is not None
        return all(c.is_finished for c in self.children)

    def live_requests(self) -> list[Request]:
        return list(self.beam.live) if self.beam is not None else self.children


class OutputProcessor:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.parents: dict[str, ParentState] = {}

    def add(self, parent: ParentState) -> None:
        if parent.request_id in self.parents:
            raise ValueError(f"request id {parent.request_id!r} is already in use")
        n = len(parent.children)
        parent.logprobs = [[] for _ in range(n)]
        parent.cumulative_logprob = [0.0] * n
        if parent.params.prompt_logprobs is not None:
            parent.prompt_logprobs = [None] * len(parent.prompt_token_ids)
        self.parents[parent.request_id] = parent

    def on_prompt_logprobs(self, parent: ParentState, start: int, logprobs: list[TokenLogprobs]) -> None:
        """`logprobs[j]` is of prompt token start + 1 + j (from the logits at position start + j)."""
        if parent.prompt_logprobs is None:
            return
        for j, lp in enumerate(logprobs):
            parent.prompt_logprobs[start + 1 + j] = self._logprob_dict(lp)

    def on_token(self, req: Request, logprobs: TokenLogprobs | None) -> str | None:
        """Feed the newest token of `req` to its detokenizer; returns a matched stop string."""
        parent = self.parents[req.parent_id]
        i = req.output_index
        if logprobs is not None:
            parent.cumulative_logprob[i] += logprobs.logprob
            if parent.params.logprobs is not None:
                parent.logprobs[i].append(self._logprob_dict(logprobs))
        token = req.output_token_ids[-1]
        if req.is_finished and req.stop_reason is None or req.stop_reason == token:
            # EOS or a stop token ended it: as vLLM, its text is never part of the output (it only
            # shows at all with skip_special_tokens=False) unless include_stop_str_in_output.
            if not parent.params.include_stop_str_in_output and req.finish_reason == FinishReason.STOP:
                return None
        return parent.detoks[i].update([token])

    def _logprob_dict(self, lp: TokenLogprobs) -> dict[int, Logprob]:
        decode = self.tokenizer.convert_ids_to_tokens
        out = {lp.token_id: Logprob(lp.logprob, lp.rank, decode(lp.token_id))}
        for rank, (tid, value) in enumerate(zip(lp.top_ids, lp.top_logprobs), start=1):
            out.setdefault(tid, Logprob(value, rank, decode(tid)))
        return out

    def _sampled_outputs(self, parent: ParentState) -> list[CompletionOutput]:
        p = parent.params
        ranked = p.best_of > p.n
        if ranked and not parent.finished:
            return []  # which n are returned is only known at the end
        outputs = []
        for i, child in enumerate(parent.children):
            done = child.is_finished
            outputs.append(CompletionOutput(
                index=i,
                text=parent.detoks[i].text(done),
                token_ids=list(child.output_token_ids),
                cumulative_logprob=parent.cumulative_logprob[i] if p.logprobs is not None or ranked else None,
                logprobs=list(parent.logprobs[i]) if p.logprobs is not None else None,
                finish_reason=str(child.finish_reason) if done else None,
                stop_reason=child.stop_reason if done else None,
            ))
        if ranked:
            outputs.sort(key=lambda o: -o.cumulative_logprob)  # stable: lower index wins ties
            outputs = outputs[: p.n]
            for i, out in enumerate(outputs):
                out.index = i
        return outputs

    def _beam_outputs(self, parent: ParentState) -> list[CompletionOutput]:
        if not parent.finished:
            return []
        return [self._beam_output(parent, i, hyp) for i, hyp in enumerate(parent.beam.results())]

    def _beam_output(self, parent: ParentState, index: int, hyp: Hypothesis) -> CompletionOutput:
        p = parent.params
        ids = hyp.token_ids
        stopped = bool(ids) and ids[-1] in parent.beam.search.stop_ids
        reason = FinishReason.STOP if stopped else (parent.ended or FinishReason.LENGTH)
        stop_reason = ids[-1] if stopped and ids[-1] in p.stop_token_ids else None
        detok = IncrementalDetokenizer(self.tokenizer, parent.prompt_token_ids, p)
        stop_str = detok.update(ids[:-1] if stopped and not p.include_stop_str_in_output else ids)
        if stop_str is not None:
            reason, stop_reason = FinishReason.STOP, stop_str
        return CompletionOutput(index=index, text=detok.text(True), token_ids=list(ids),
                                cumulative_logprob=hyp.cumulative_logprob, logprobs=None,
                                finish_reason=str(reason), stop_reason=stop_reason)

    def snapshot(self, parent: ParentState) -> RequestOutput:
        outputs = self._beam_outputs(parent) if parent.beam is not None else self._sampled_outputs(parent)
        finished = parent.finished
        if finished:
            self.parents.pop(parent.request_id, None)
        first = parent.children[0] if parent.children else parent.beam.leader if parent.beam is not None else None
        queue_time = None
        if first is not None and first.first_scheduled_time is not None:
            queue_time = max(0.0, first.first_scheduled_time - first.arrival_time)
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            outputs=outputs,
            finished=finished,
            prompt_logprobs=list(parent.prompt_logprobs) if parent.prompt_logprobs is not None else None,
            num_cached_tokens=max(0, first.num_cached_tokens) if first is not None else 0,
            error=parent.error if parent.error is not None and finished else None,
            queue_time=queue_time,
        )
