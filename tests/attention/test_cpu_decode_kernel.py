"""The C++ CPU paged-decode kernel against a plain gather + softmax reference in float64.

Caches hold a large value in the null block 0 (where padded table entries point) and in unused
blocks, so a kernel that reads past seq_len or follows padding shows it at once.
"""

from __future__ import annotations

import random

import pytest
import torch

from npu_serve_kernels.paged_attention import cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason="C++ CPU decode kernel could not be built here")


def reference(q, k_cache, v_cache, tables, lens, scale):
    """float64: per request, gather its tokens, expand KV heads to query heads, softmax(q k^T) v."""
    nd, num_heads, _ = q.shape
    group = num_heads // k_cache.shape[2]
    block_size = k_cache.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    for r in range(nd):
        n = int(lens[r])
        if n == 0:
            continue
        blocks = tables[r, : -(-n // block_size)].long()
        k = k_cache[blocks].flatten(0, 1)[:n].double().repeat_interleave(group, dim=1)  # [n, H, D]
        v = v_cache[blocks].flatten(0, 1)[:n].double().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[r].double(), k) * scale
        out[r] = torch.einsum("hn,nhd->hd", scores.softmax(-1), v)
    return out


def make(nd, heads, kv_heads, head_dim, block_size, lens, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in lens]
    num_blocks = 1 + sum(need) + 3  # block 0 is the null block; a few unused ones too
    order = list(range(1, num_blocks))
    random.Random(seed).shuffle(order)
    tables = torch.zeros(nd, max(need) + 2, dtype=torch.int32)  # extra padding columns -> 0
    used = 0
    for r, k in enumerate(need):
        tables[r, :k] = torch.tensor(order[used : used + k], dtype=torch.int32)
        used += k
    kv_cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    kv_cache[:, 0] = 100.0
    for b in order[used:]:
        kv_cache[:, b] = -100.0
    # Poison the slots after each request's last token in its last block.
    for r, n in enumerate(lens):
        if n % block_size:
            kv_cache[:, int(tables[r, need[r] - 1]), n % block_size :] = 50.0
    q = torch.randn(nd, heads, head_dim, generator=gen).to(dtype)
    return q, kv_cache, tables, torch.tensor(lens, dtype=torch.int32)


CASES = [  # heads, kv_heads, head_dim, block_size
    (9, 3, 64, 16),
    (4, 2, 128, 16),
    (8, 8, 64, 128),
    (9, 3, 128, 128),
    (4, 2, 64, 128),
    (8, 8, 128, 16),
    (4, 2, 72, 16),  # head_dim without a compiled-in variant, not a multiple of the 16 lanes
    (32, 8, 64, 16),  # Llama-3.2-1B's layout: 4 query heads per KV head (register-resident path)
    (16, 2, 128, 16),  # 8 per KV head
    (10, 2, 64, 16),  # 5 per KV head: no compiled-in group size, generic loops at D=64
    (9, 3, 64, 8),  # blocks smaller than the K pass's 16-token groups
    (4, 2, 64, 24),  # blocks that are not a multiple of 16: groups of 16 and 8 per block
]


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("heads,kv_heads,head_dim,block_size", CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_matches_reference(heads, kv_heads, head_dim, block_size, dtype, atol, threads):
    bs = block_size
    lens = [1, bs, 2 * bs, bs - 1, bs + 1, 3 * bs + 5, 2, 37, 300]
    q, kv, tables, seq_lens = make(len(lens), heads, kv_heads, head_dim, bs, lens, dtype, seed=heads * bs + head_dim)
    scale = head_dim**-0.5
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = cpu.paged_decode(q, kv[0], kv[1], tables, seq_lens, scale)
    finally:
        torch.set_num_threads(prev)
    assert out.dtype == dtype and out.shape == q.shape
    # bf16 outputs are rounded to bf16 (relative 2^-9); the reference sees the same bf16 inputs.
    torch.testing.assert_close(out.double(), reference(q, kv[0], kv[1], tables, seq_lens, scale),
                               atol=atol, rtol=atol)


def test_large_scores_stay_finite():
    """Scores in the hundreds: a softmax without the max shift would overflow to inf/NaN."""
    q, kv, tables, lens = make(3, 4, 2, 64, 16, [5, 40, 129], torch.float32, seed=1)
    q = q * 30.0
    out = cpu.paged_decode(q, kv[0], kv[1], tables, lens, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), reference(q, kv[0], kv[1], tables, lens, 1.0), atol=1e-4, rtol=1e-4)


def test_zero_length_gives_zeros_and_empty_batch():
    q, kv, tables, lens = make(2, 4, 2, 64, 16, [0 + 1, 20], torch.float32)
    lens[0] = 0
    out = cpu.paged_decode(q, kv[0], kv[1], tables, lens, 0.125)
    assert (out[0] == 0).all()
    torch.testing.assert_close(out[1:].double(), reference(q[1:], kv[0], kv[1], tables[1:], lens[1:], 0.125))
    empty = cpu.paged_decode(q[:0], kv[0], kv[1], tables[:0], lens[:0], 0.125)
    assert empty.shape == (0, 4, 64)


def test_int64_tables_and_views_of_full_cache_accepted():
    """The engine passes kv_cache[0] / kv_cache[1] and may hold int64 metadata: no copies of the cache."""
    q, kv, tables, lens = make(3, 9, 3, 64, 16, [7, 16, 33], torch.bfloat16)
    out = cpu.paged_decode(q, kv[0], kv[1], tables.long(), lens.long(), 0.125)
    torch.testing.assert_close(out.double(), reference(q, kv[0], kv[1], tables, lens, 0.125), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda a: a.update(seq_lens=torch.tensor([10_000, 1, 1], dtype=torch.int32)), "does not fit"),
        (lambda a: a["tables"].__setitem__((0, 0), 10_000), "out of range"),
        (lambda a: a.update(q=a["q"].float()), "dtype"),
        (lambda a: a.update(q=a["q"][:, :3]), "multiple"),
        (lambda a: a.update(k=a["k"].transpose(1, 2).contiguous().transpose(1, 2)), "contiguous"),
    ],
)
def test_bad_input_raises(mutate, message):
    q, kv, tables, lens = make(3, 4, 2, 64, 16, [7, 16, 33], torch.bfloat16)
    args = {"q": q, "k": kv[0], "v": kv[1], "tables": tables.clone(), "seq_lens": lens}
    mutate(args)
    with pytest.raises(RuntimeError, match=message):
        cpu.paged_decode(args["q"], args["k"], args["v"], args["tables"], args["seq_lens"], 0.125)
