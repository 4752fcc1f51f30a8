"""Per-request logits transforms, batched over rows (vLLM 0.6.0 semantics and order).

`process_logits(logits, rows)` runs the whole chain and returns the logits the sampler draws from:

1. logit_bias added to the raw logits (clamped to [-100, 100] as the OpenAI API and vLLM do),
2. min_tokens: while fewer than `min_tokens` tokens were generated, the stop ids
   (`all_stop_token_ids`, i.e. EOS, plus `stop_token_ids`) get -inf,
3. repetition_penalty over prompt + output tokens (positive logits divided, negative multiplied),
   frequency_penalty * count and presence_penalty * [count > 0] over output tokens (subtracted),
4. for sampled (non-greedy) rows only: temperature, then top_k, top_p, min_p (dropped tokens -> -inf).

Each step touches only the rows that ask for it and returns early when none do, so a batch of plain
greedy rows costs nothing here. Rows are duck-typed `SamplingRow`s (params, prompt_token_ids,
output_token_ids). Every function works on a float32 [N, V] tensor and may modify it in place;
`process_logits` clones first, so the caller's raw logits stay intact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from npu_serve.worker.sampler import SamplingRow

_GREEDY_EPS = 1e-5  # same threshold as SamplingParams.is_greedy
_BIAS_LIMIT = 100.0


def is_greedy_row(row: SamplingRow) -> bool:
    # Temperature alone decides. Beam-search rows never reach the sampler (engine/beam_search.py
    # ranks candidates from their logprobs), so a temperature-0 row here is plain greedy.
    return row.params.temperature < _GREEDY_EPS


def apply_logit_bias(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Adds each row's logit_bias. Token ids outside [0, V) are ignored: the server validates them
    against the tokenizer, and an engine step must not crash on one request's bad input."""
    vocab = logits.shape[-1]
    r_idx, t_idx, vals = [], [], []
    for i, row in enumerate(rows):
        for tok, bias in (row.params.logit_bias or {}).items():
            if 0 <= tok < vocab:
                r_idx.append(i)
                t_idx.append(tok)
                vals.append(min(_BIAS_LIMIT, max(-_BIAS_LIMIT, bias)))
    if r_idx:
        index = (_long(r_idx, logits.device), _long(t_idx, logits.device))
        logits.index_put_(index, torch.tensor(vals, dtype=logits.dtype, device=logits.device), accumulate=True)
    return logits


def apply_min_tokens(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Masks the stop token ids of rows that have not yet generated `min_tokens` tokens."""
    vocab = logits.shape[-1]
    r_idx, t_idx = [], []
    for i, row in enumerate(rows):
        p = row.params
        if len(row.output_token_ids) >= p.min_tokens:
            continue
        stop_ids = set(p.all_stop_token_ids) | set(p.stop_token_ids or ())
        for tok in stop_ids:
            if 0 <= tok < vocab:
                r_idx.append(i)
                t_idx.append(tok)
    if r_idx:
        logits[_long(r_idx, logits.device), _long(t_idx, logits.device)] = float("-inf")
    return logits


def _needs_penalties(row: SamplingRow) -> bool:
    p = row.params
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


def _token_counts(seqs: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[len(seqs), vocab] float counts of each token id per sequence (ids >= vocab are dropped)."""
    width = max((len(s) for s in seqs), default=0)
    counts = torch.zeros(len(seqs), vocab + 1, dtype=torch.float32, device=device)
    if width == 0:
        return counts[:, :vocab]
    # Pad with `vocab`: the extra column absorbs the padding (and out-of-range ids), then is dropped.
    padded = torch.full((len(seqs), width), vocab, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            padded[i, : len(s)] = torch.tensor(s, dtype=torch.long).clamp_(0, vocab)
    padded = padded.to(device)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=torch.float32))
    return counts[:, :vocab]


def apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Repetition (prompt + output), frequency and presence (output only) penalties, batched over
    the rows that set any of them."""
    sel = [i for i, row in enumerate(rows) if _needs_penalties(row)]
    if not sel:
        return logits
    device, vocab = logits.device, logits.shape[-1]
    sel_rows = [rows[i] for i in sel]
    idx = _long(sel, device)
    sub = logits.index_select(0, idx)
    out_counts = _token_counts([list(r.output_token_ids) for r in sel_rows], vocab, device)

    rep = [r.params.repetition_penalty for r in sel_rows]
    if any(x != 1.0 for x in rep):
        seen = (_token_counts([list(r.prompt_token_ids) for r in sel_rows], vocab, device) > 0) | (out_counts > 0)
        pen = torch.tensor(rep, dtype=sub.dtype, device=device).unsqueeze(1)
        penalised = torch.where(sub > 0, sub / pen, sub * pen)
        sub = torch.where(seen, penalised, sub)
    freq = torch.tensor([r.params.frequency_penalty for r in sel_rows], dtype=sub.dtype, device=device)
    pres = torch.tensor([r.params.presence_penalty for r in sel_rows], dtype=sub.dtype, device=device)
    sub = sub - freq.unsqueeze(1) * out_counts - pres.unsqueeze(1) * (out_counts > 0).to(sub.dtype)
    logits.index_copy_(0, idx, sub)
    return logits


def apply_temperature(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Divides sampled rows by their temperature; greedy rows keep theirs (as if temperature 1)."""
    temps = [1.0 if is_greedy_row(r) else r.params.temperature for r in rows]
    if any(t != 1.0 for t in temps):
        logits.div_(torch.tensor(temps, dtype=logits.dtype, device=logits.device).unsqueeze(1))
    return logits


def apply_top_k(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Keeps the top_k largest logits of each row, and every token tied with the k-th (as vLLM and
    transformers do). Uses topk, not a full sort: sorting a 64 x 49k batch costs ~200 ms on CPU."""
    vocab = logits.shape[-1]
    ks = [vocab if is_greedy_row(r) or r.params.top_k < 0 else min(r.params.top_k, vocab) for r in rows]
    if all(k >= vocab for k in ks):
        return logits
    k_max = max(k for k in ks if k < vocab)
    top = logits.topk(k_max, dim=-1).values
    kth = top.gather(1, torch.tensor([[min(k, k_max) - 1] for k in ks], device=logits.device))
    kth[torch.tensor([k >= vocab for k in ks], device=logits.device)] = float("-inf")
    return logits.masked_fill_(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Keeps the most likely tokens until their mass reaches top_p: token i is dropped when the
    mass of the tokens more likely than it is >= top_p (the most likely is always kept). This is
    vLLM's and transformers' rule (`ascending cumsum <= 1 - top_p` dropped), computed on the top
    candidates only: it tries 256, then more, until the candidates hold top_p of the mass."""
    vocab = logits.shape[-1]
    ps = [1.0 if is_greedy_row(r) else r.params.top_p for r in rows]
    if all(p >= 1.0 for p in ps):
        return logits
    device = logits.device
    p_col = torch.tensor(ps, dtype=logits.dtype, device=device).unsqueeze(1)
    active = p_col.squeeze(1) < 1.0
    probs = logits.softmax(dim=-1)
    for k in (256, 4096, vocab):
        top = probs.topk(min(k, vocab), dim=-1).values  # descending
        cum = top.cumsum(dim=-1)
        if k >= vocab or bool((cum[:, -1:] >= p_col)[active].all()):
            break
    keep = (cum - top) < p_col
    keep[:, 0] = True
    smallest_kept = torch.where(keep, top, torch.full_like(top, float("inf"))).amin(dim=-1, keepdim=True)
    smallest_kept[~active] = 0.0
    return logits.masked_fill_(probs < smallest_kept, float("-inf"))


def apply_min_p(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Drops tokens whose probability is below min_p times the most likely token's."""
    min_ps = [0.0 if is_greedy_row(r) else r.params.min_p for r in rows]
    if not any(m > 0.0 for m in min_ps):
        return logits
    probs = logits.softmax(dim=-1)
    threshold = torch.tensor(min_ps, dtype=probs.dtype, device=logits.device).unsqueeze(1) * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill_(probs < threshold, float("-inf"))


def process_logits(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """The full chain (see the module docstring) on a float32 copy of `logits` [N, V]."""
    if logits.shape[0] != len(rows):
        raise ValueError(f"{logits.shape[0]} logits rows but {len(rows)} sampling rows")
    out = logits.float().clone()
    for step in (apply_logit_bias, apply_min_tokens, apply_penalties, apply_temperature, apply_top_k, apply_top_p, apply_min_p):
        out = step(out, rows)
    return out


def needs_processing(rows: Sequence[SamplingRow]) -> bool:
    """False when `process_logits` would leave every row as it is (all greedy, nothing to apply)."""
    for row in rows:
        p = row.params
        if not is_greedy_row(row) or p.logit_bias or _needs_penalties(row):
            return True
        if len(row.output_token_ids) < p.min_tokens:
            return True
    return False


def _long(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)
