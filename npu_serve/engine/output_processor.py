"""Turns engine progress into RequestOutput snapshots: detokenizes, applies stop strings, and fans the
n child sequences of one request back into one output.

A user request with n outputs runs as n child Requests (ids `<id>#<i>`); they share the prompt's
full KV blocks through the prefix cache (ref counts), so n > 1 costs one prompt computation plus a
partial block each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from npu_serve.engine.detokenizer import IncrementalDetokenizer
from npu_serve.engine.request import Request
from npu_serve.outputs import CompletionOutput, FinishReason, Logprob, RequestOutput
from npu_serve.sampling_params import SamplingParams
from npu_serve.worker.sampler import TokenLogprobs


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

    @property
    def finished(self) -> bool:
        return all(c.is_finished for c in self.children)


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
        self.parents[parent.request_id] = parent

    def parent_of(self, req: Request) -> ParentState | None:
        return self.parents.get(req.parent_id or req.request_id)

    def on_token(self, req: Request, logprobs: TokenLogprobs | None) -> str | None:
        """Feed the newest token of `req` to its detokenizer; returns a matched stop string."""
        parent = self.parents[req.parent_id]
        i = req.output_index
        if logprobs is not None:
            parent.cumulative_logprob[i] += logprobs.logprob
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

    def snapshot(self, parent: ParentState) -> RequestOutput:
        outputs = []
        for i, child in enumerate(parent.children):
            done = child.is_finished
            want_lp = parent.params.logprobs is not None
            outputs.append(CompletionOutput(
                index=i,
                text=parent.detoks[i].text(done),
                token_ids=list(child.output_token_ids),
                cumulative_logprob=parent.cumulative_logprob[i] if want_lp else None,
                logprobs=list(parent.logprobs[i]) if want_lp else None,
                finish_reason=str(child.finish_reason) if done else None,
                stop_reason=child.stop_reason if done else None,
            ))
        finished = parent.finished
        if finished:
            self.parents.pop(parent.request_id, None)
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            outputs=outputs,
            finished=finished,
            num_cached_tokens=max(0, parent.children[0].num_cached_tokens),
            error=parent.error if any(c.finish_reason == FinishReason.ERROR for c in parent.children) else None,
        )
