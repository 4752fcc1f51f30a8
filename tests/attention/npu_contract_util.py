"""Helpers for the NPU backend's contract tests: an independent float64 reference (windows included) and
a runner that calls the backend the way the engine does, layer by layer."""

from __future__ import annotations

import torch

from npu_serve.attention.backend import AttentionLayer
from npu_serve.attention.npu import NpuAttentionBackend
from tests.attention.paged_cases import PagedCase, make_case


def layer_for(case: PagedCase, window: int | None = None, idx: int = 0) -> AttentionLayer:
    h, d = case.query.shape[1], case.query.shape[2]
    return AttentionLayer(idx, h, case.key.shape[1], d, case.value.shape[2], case.scale, sliding_window=window)


def split_cache(kv_cache) -> tuple[torch.Tensor, torch.Tensor]:
    """(key_cache, value_cache) clones of a case's cache, stacked or already a pair."""
    key_cache, value_cache = kv_cache
    return key_cache.clone(), value_cache.clone()


def expected_cache(case: PagedCase) -> tuple[torch.Tensor, torch.Tensor]:
    """The case's caches after the write, on the host (works for NPU cases too)."""
    key_cache, value_cache = (c.cpu().clone() for c in case.kv_cache)
    slots = case.meta.slot_mapping.long().cpu()
    key_cache.flatten(0, 1).index_copy_(0, slots, case.key.cpu())
    value_cache.flatten(0, 1).index_copy_(0, slots, case.value.cpu())
    return key_cache, value_cache


def expected_attention(case: PagedCase, window: int | None = None) -> torch.Tensor:
    """Causal attention in float64, explicit softmax: a query at position p sees keys j <= p, and with a
    window W only j > p - W (the contract's sliding_window)."""
    key_cache, value_cache = expected_cache(case)
    m, block_size = case.meta, key_cache.shape[1]
    q = case.query.cpu().double()
    out = torch.zeros(q.shape[0], q.shape[1], value_cache.shape[-1], dtype=torch.float64)
    for r, seq_len in enumerate(m.seq_lens_cpu):
        a, b = m.query_start_loc_cpu[r], m.query_start_loc_cpu[r + 1]
        blocks = m.block_tables[r, : -(-seq_len // block_size)].long().cpu()
        k = key_cache[blocks].flatten(0, 1)[:seq_len].double()
        v = value_cache[blocks].flatten(0, 1)[:seq_len].double()
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", q[a:b], k) * case.scale
        pos = torch.arange(seq_len - (b - a), seq_len)[:, None]
        j = torch.arange(seq_len)[None, :]
        allowed = j <= pos
        if window is not None:
            allowed &= j > pos - window
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[a:b] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    return out


def run_backend(case: PagedCase, backend: NpuAttentionBackend | None = None, window: int | None = None,
                num_layers: int = 1):
    """The backend's output for `case` and the caches it wrote, calling it once per layer as the model
    runner does within one step (same metadata object, each layer its own cache)."""
    backend = backend or NpuAttentionBackend()
    caches = [split_cache(case.kv_cache) for _ in range(num_layers)]
    out = None
    for i, cache in enumerate(caches):
        out = backend.forward(case.query, case.key, case.value, cache, case.meta, layer_for(case, window, i))
    return out, caches[-1]


def check_result(case: PagedCase, out: torch.Tensor, cache, window: int | None = None, tol: float = 3e-2) -> None:
    key_exp, value_exp = expected_cache(case)
    assert torch.equal(cache[0].cpu(), key_exp) and torch.equal(cache[1].cpu(), value_exp)
    assert out.shape == case.query.shape[:2] + (case.value.shape[2],) and out.dtype == case.query.dtype
    torch.testing.assert_close(out.cpu().double(), expected_attention(case, window), atol=tol, rtol=tol)


def smol_mixed_case(dtype=torch.bfloat16) -> PagedCase:
    """SmolLM2-135M's geometry (9 query heads over 3, head_dim 64), block 128: two decodes, a chunk after
    150 cached tokens that crosses a block boundary, a fresh prefill."""
    return make_case([1, 1, 30, 7], [5, 200, 180, 7], 2, 9, 3, 64, 128, dtype, seed=3, device="cpu")
