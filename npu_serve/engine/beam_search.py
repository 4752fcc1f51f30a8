"""Beam search with transformers' semantics (`generate(num_beams=w, do_sample=False, ...)`), torch-free.

`BeamSearch` is the algorithm on plain numbers; `BeamGroup` ties it to engine Requests (one per live
beam) whose KV blocks are shared by fork and dropped by free, never copied whole.

The algorithm, per step (HF's vectorised beam search, batch size 1; `cur` = tokens generated so far):
1. Every live beam proposes its top candidates; a candidate's score is the beam's running score plus
   the token's log-probability (log_softmax of the raw logits), rounded to float32 as HF's tensors are.
   The best K = width * (1 + max(1, number of stop ids)) candidates over all beams are kept, best first.
2. A candidate "hits a stop" when its token is a stop id (EOS unless ignore_eos, stop_token_ids) or
   when it reaches max_new_tokens. The first `width` candidates that do not hit a stop become the new
   beams. Of the first `width` candidates (and only those), the ones that hit a stop become finished
   hypotheses scored `score / (cur + 1) ** length_penalty`; the best `width` hypotheses are kept.
3. It stops when (a) early_stopping is True and `width` hypotheses are finished, (b) every kept
   candidate hit a stop (max length), or (c) `width` hypotheses are finished and the best running
   score, normalised by `(cur + 1) ** length_penalty` (by `max_new ** length_penalty` when
   early_stopping == "never" and length_penalty > 0), is no better than the worst finished one. HF's
   condition (c) latches: once false it stays false.
The result is the finished hypotheses, best first.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from npu_serve.engine.request import Request
from npu_serve.outputs import FinishReason
from npu_serve.sampling_params import SamplingParams


def f32(x: float) -> float:
    """Round to float32, as HF's float32 score tensors do after every operation."""
    return struct.unpack("f", struct.pack("f", x))[0]


def beam_stop_ids(params: SamplingParams, eos_token_ids: frozenset[int]) -> frozenset[int]:
    return frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else eos_token_ids)


def candidates_per_beam(params: SamplingParams) -> int:
    """How many top tokens each beam must report (enough for any stop-id set: the global top K lies
    in the union of every beam's top K)."""
    return params.best_of * (1 + max(1, len(params.all_stop_token_ids)))


@dataclass
class Hypothesis:
    token_ids: list[int]
    score: float  # length-normalised, what hypotheses are ranked by
    cumulative_logprob: float


@dataclass
class BeamSearch:
    width: int
    length_penalty: float
    early_stopping: bool | str
    max_new_tokens: int
    stop_ids: frozenset[int]
    min_tokens: int = 0
    scores: list[float] = field(default_factory=lambda: [0.0])  # running beams' cumulative logprobs
    finished: list[Hypothesis] = field(default_factory=list)  # best first, at most width
    done: bool = False
    _improvable: bool = True

    def step(self, generated: list[list[int]], candidates: list[list[tuple[int, float]]]) -> list[tuple[int, int]]:
        """One step. `generated[i]` are live beam i's tokens so far, `candidates[i]` its (token,
        logprob) proposals. Returns the new beams as (index of the beam it extends, token), best first;
        empty once `done`."""
        cur = len(generated[0])
        k = self.width * (1 + max(1, len(self.stop_ids)))
        pool = []
        for i, (score, cands) in enumerate(zip(self.scores, candidates)):
            for token, logprob in cands:
                if cur < self.min_tokens and token in self.stop_ids:
                    continue  # HF's min_new_tokens processor masks them to -inf
                pool.append((f32(score + logprob), i, token))
        # Best first; ties go to the lower flat index (beam-major), as a stable top-k would.
        pool.sort(key=lambda c: (-c[0], c[1], c[2]))
        pool = pool[:k]
        at_max = cur + 1 >= self.max_new_tokens
        hits = [at_max or token in self.stop_ids for _, _, token in pool]

        norm = f32((cur + 1) ** self.length_penalty)
        new_done = [Hypothesis(generated[i] + [token], f32(score / norm), score)
                    for (score, i, token), hit in list(zip(pool, hits))[: self.width] if hit]
        if new_done:
            merged = self.finished + new_done
            merged.sort(key=lambda h: -h.score)  # stable: earlier hypotheses win ties, as HF's concat + topk
            self.finished = merged[: self.width]

        running = [c for c, hit in zip(pool, hits) if not hit][: self.width]
        full = len(self.finished) == self.width
        if running and full:
            best_len = self.max_new_tokens if self.early_stopping == "never" and self.length_penalty > 0 else cur + 1
            best_possible = f32(running[0][0] / f32(best_len ** self.length_penalty))
            self._improvable = self._improvable and best_possible > self.finished[-1].score
        if not running or (full and self.early_stopping is True) or not self._improvable:
            self.done = True
            self.scores = []
            return []
        self.scores = [score for score, _, _ in running]
        return [(i, token) for _, i, token in running]


class BeamGroup:
    """The live beams of one beam-search request as engine Requests, advanced in lockstep: each step
    every live beam reports candidates, then `advance` forks the chosen beams (shared blocks), appends
    their tokens, and frees the dropped ones."""

    def __init__(self, request_id: str, leader: Request, search: BeamSearch, num_outputs: int):
        self.request_id = request_id
        self.search = search
        self.num_outputs = num_outputs
        self.live: list[Request] = [leader]
        self.leader = leader  # the first beam: its arrival and first schedule are the request's
        self.started = False
        self._candidates: dict[str, list[tuple[int, float]]] = {}
        self._next_id = 1

    @property
    def width(self) -> int:
        return self.search.width

    @property
    def done(self) -> bool:
        return self.search.done

    def add_candidates(self, req: Request, candidates: list[tuple[int, float]]) -> None:
        self._candidates[req.request_id] = candidates  # a recomputed (preempted) beam reports again

    def ready(self) -> bool:
        return all(r.request_id in self._candidates for r in self.live)

    def advance(self, scheduler) -> None:
        self.started = True
        live = self.live
        choices = self.search.step([r.output_token_ids for r in live], [self._candidates[r.request_id] for r in live])
        self._candidates.clear()
        # Fork first, from the beams' state before this step's tokens are appended.
        plan: list[tuple[Request, int]] = []
        kept: set[int] = set()
        for parent_index, token in choices:
            parent = live[parent_index]
            if parent_index in kept:
                child = Request(f"{self.request_id}#{self._next_id}", parent.prompt_token_ids, parent.sampling_params,
                                parent.eos_token_ids, parent_id=parent.parent_id)
                self._next_id += 1
                scheduler.fork_request(parent, child)
                scheduler.beam_groups[child.request_id] = self
                plan.append((child, token))
            else:
                kept.add(parent_index)
                plan.append((parent, token))
        for index, req in enumerate(live):
            if index not in kept:  # dropped (or the search ended): its blocks go back to the pool
                scheduler.finish_request(req.request_id, FinishReason.STOP)
        for req, token in plan:
            req.output_token_ids.append(token)
        self.live = [req for req, _ in plan]

    def results(self) -> list[Hypothesis]:
        """The best `num_outputs` hypotheses; before the search is done (an abort), the running beams."""
        if self.done:
            return self.search.finished[: self.num_outputs]
        hyps = [Hypothesis(list(r.output_token_ids), s, s) for r, s in zip(self.live, self.search.scores)]
        return hyps[: self.num_outputs]
