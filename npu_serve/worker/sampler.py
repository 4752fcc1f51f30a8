"""Turns the logits of the sampled positions into next tokens, one row per sampled request.

Contract: `Sampler()(logits, rows)` with logits float32 [N, V] (raw model output) and one
`SamplingRow` per logits row; returns one token id per row. Seeded rows draw from their own
generator, so a seeded request gives the same tokens whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from npu_serve.sampling_params import SamplingParams


@dataclass
class SamplingRow:
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None  # set for seeded requests, owned by the model runner


@dataclass
class TokenLogprobs:
    """Logprobs at one sampled position: the chosen token's, its rank, and the top alternatives."""

    token_id: int
    logprob: float
    rank: int
    top_ids: list[int]
    top_logprobs: list[float]


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


class Sampler:
    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        logits = logits.float()
        if all(r.params.is_greedy for r in rows):
            tokens = logits.argmax(dim=-1).tolist()
            return SamplerOutput(tokens, [None] * len(rows))
        tokens = []
        for i, row in enumerate(rows):
            tokens.append(self._sample_row(logits[i], row))
        return SamplerOutput(tokens, [None] * len(rows))

    @staticmethod
    def _sample_row(logits: torch.Tensor, row: SamplingRow) -> int:
        p = row.params
        if p.is_greedy:
            return int(logits.argmax())
        logits = logits / p.temperature
        if p.top_k > 0:
            kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, idx = probs.sort(descending=True)
            cum = sorted_probs.cumsum(0)
            drop = (cum - sorted_probs) > p.top_p
            sorted_probs[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, idx, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=row.generator))
