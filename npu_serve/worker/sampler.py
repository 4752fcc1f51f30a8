"""Turns the logits of the sampled positions into next tokens, one row per sampled request.

Contract: `Sampler()(logits, rows)` with logits [N, V] (raw model output, float32 or the model's dtype) and one
`SamplingRow` per logits row; returns one token id per row, and `TokenLogprobs` for the rows whose
params ask for logprobs (None elsewhere).

- Logits go through `process_logits` (logit_bias, min_tokens, penalties, temperature, top_k, top_p,
  min_p; vLLM 0.6.0 order). Greedy rows take the argmax of the processed logits; the others draw
  by the exponential race `argmax(probs / q)`, q ~ Exp(1), which picks token i with probability
  probs[i] and needs no cumulative sums.
- Seeded rows draw their q from their own generator (`SamplingRow.generator`, owned by the model
  runner), always V numbers per step, so a seeded request gives the same tokens whatever else is in
  the batch. Unseeded rows share the global RNG.
- All-greedy batches with nothing to apply (the common case) are one argmax (the platform's, see
  `Sampler.__init__`) over the logits as they come: every bf16/fp16 value widens to fp32 exactly, so
  the argmax is the one of the fp32 copy, without the copy. Everything else works on an fp32 copy.
- Logprobs are `log_softmax` of the RAW logits (before logit_bias, penalties and temperature), so
  they equal the model's own distribution; rank 1 is the most likely token. (vLLM 0.6.0 reports
  them after processing instead; ours is a deliberate, documented choice.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from npu_serve.engine.messages import TokenLogprobs
from npu_serve.sampling_params import SamplingParams
from npu_serve.worker.logits_processors import is_greedy_row, needs_processing, process_logits

# Rows of log_softmax computed at once by gather_logprobs: bounds the [rows, V] temporaries
# (256 x 49k vocab x 4 bytes = 50 MB) when a long prompt asks for prompt_logprobs.
_LOGPROB_CHUNK = 256


@dataclass
class SamplingRow:
    params: SamplingParams
    # Histories the logits processors read (penalties, min_tokens); may be empty when none does.
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    generator: torch.Generator | None  # set for seeded requests, owned by the model runner


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


def _torch_argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


def _torch_float(logits: torch.Tensor) -> torch.Tensor:
    return logits.float()


class Sampler:
    def __init__(self, argmax: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 to_float: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """`argmax`: the platform's `logits.argmax(dim=-1)` for greedy rows (Platform.greedy_argmax:
        on CPU a C++ kernel, ~10x faster than torch's at a decode batch's logits); torch's when None.
        `to_float`: the platform's `logits.float()` (Platform.logits_to_float); torch's when None."""
        self._argmax = argmax or _torch_argmax
        self.to_float = to_float or _torch_float

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow],
                 argmax: torch.Tensor | None = None) -> SamplerOutput:
        """`argmax`: `logits.argmax(-1)` where the caller has it already (lm_head's kernel computes it
        beside the logits), used where every row is plain greedy."""
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits must be [len(rows)={len(rows)}, V], got {tuple(logits.shape)}")
        if not rows:
            return SamplerOutput([], [])
        if needs_processing(rows):
            logits = self.to_float(logits)
            token_ids = self._pick(process_logits(logits, rows), rows)
        elif argmax is not None and argmax.shape == logits.shape[:1]:
            token_ids = argmax
        else:
            token_ids = self._argmax(logits)  # the model's dtype is fine (module docstring)
        return SamplerOutput(token_ids.tolist(), self._logprobs(logits, token_ids, rows))

    def _pick(self, processed: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        token_ids = self._argmax(processed)
        sampled = [i for i, row in enumerate(rows) if not is_greedy_row(row)]
        if not sampled:
            return token_ids
        idx = torch.tensor(sampled, dtype=torch.long, device=processed.device)
        probs = processed.index_select(0, idx).softmax(dim=-1)
        # q = -log(u), u ~ U[0, 1), is Exp(1); on CPU it is 5x faster than exponential_().
        q = torch.empty_like(probs)
        unseeded = [j for j, i in enumerate(sampled) if rows[i].generator is None]
        if len(unseeded) == len(sampled):
            q.uniform_()
        else:
            if unseeded:
                un_idx = torch.tensor(unseeded, dtype=torch.long, device=q.device)
                q.index_copy_(0, un_idx, torch.empty(len(unseeded), q.shape[1], device=q.device).uniform_())
            for j, i in enumerate(sampled):
                if rows[i].generator is not None:
                    q[j].uniform_(generator=rows[i].generator)
        q.log_().neg_()
        # Guard q == 0 (a backend whose uniform_ can return 1.0): 0/0 would be NaN, and argmax
        # picks NaN, i.e. possibly a masked token.
        q.clamp_(min=torch.finfo(q.dtype).tiny)
        token_ids.index_copy_(0, idx, (probs / q).argmax(dim=-1))
        return token_ids

    def _logprobs(self, logits: torch.Tensor, token_ids: torch.Tensor,
                  rows: list[SamplingRow]) -> list[TokenLogprobs | None]:
        out: list[TokenLogprobs | None] = [None] * len(rows)
        wanted = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
        if not wanted:
            return out
        idx = torch.tensor(wanted, dtype=torch.long, device=logits.device)
        results = _token_logprobs(  # greedy rows' logits may still be bf16: the platform's fp32 copy
            self.to_float(logits.index_select(0, idx)), token_ids.index_select(0, idx),
            [rows[i].params.logprobs for i in wanted]
        )
        for i, res in zip(wanted, results):
            out[i] = res
        return out


def gather_logprobs(logits: torch.Tensor, target_ids: torch.Tensor | list[int], num_top: int) -> list[TokenLogprobs]:
    """Logprobs of `target_ids[m]` under `log_softmax(logits[m])` for every row m of logits [M, V],
    with its rank and the `num_top` most likely alternatives (for prompt_logprobs: row m holds the
    logits that predict prompt token m + 1)."""
    if num_top < 0:
        raise ValueError(f"num_top must be non-negative, got {num_top}")
    targets = torch.as_tensor(target_ids, dtype=torch.long, device=logits.device).reshape(-1)
    if logits.dim() != 2 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"logits [M, V] and target_ids [M] disagree: {tuple(logits.shape)} vs {tuple(targets.shape)}")
    out: list[TokenLogprobs] = []
    for start in range(0, logits.shape[0], _LOGPROB_CHUNK):
        stop = start + _LOGPROB_CHUNK
        out.extend(_token_logprobs(logits[start:stop], targets[start:stop], [num_top] * len(targets[start:stop])))
    return out


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor, num_tops: list[int]) -> list[TokenLogprobs]:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, targets.unsqueeze(1))
    ranks = (logprobs > chosen).sum(dim=-1).add_(1)
    k = min(max(num_tops, default=0), logprobs.shape[-1])
    if k > 0:
        top_vals, top_ids = logprobs.topk(k, dim=-1)
        top_vals, top_ids = top_vals.tolist(), top_ids.tolist()
    else:
        top_vals = top_ids = [[] for _ in num_tops]
    return [
        TokenLogprobs(int(t), float(c), int(r), ids[:n], vals[:n])
        for t, c, r, ids, vals, n in zip(
            targets.tolist(), chosen.squeeze(1).tolist(), ranks.tolist(), top_ids, top_vals, num_tops
        )
    ]
