"""The C++ CPU prefill kernel (bf16; AMX tiles where they run, else VDPBF16PS) against a float64
gather + causal softmax reference, its chunk invariance (any split of a prompt's queries gives the
whole prompt's bits), what it declines (returns None: the caller keeps torch's SDPA) and what it
refuses.

Caches hold NaN in every slot a request does not own, so a kernel that reads past seq_len or follows
the wrong block shows it at once.
"""

from __future__ import annotations

import random

import pytest
import torch

from npu_serve_kernels.linear import cpu as linear
from npu_serve_kernels.paged_attention import cpu

pytestmark = pytest.mark.skipif(not (cpu.available() and linear.available()),
                                reason="the prefill kernel runs only on CPUs with AVX512-BF16")


def make_case(seq_len, heads, kv_heads, head_dim, v_head_dim, block_size, seed=0):
    """Caches with the request's seq_len tokens in shuffled blocks, NaN everywhere else."""
    gen = torch.Generator().manual_seed(seed)
    used = -(-seq_len // block_size)
    num_blocks = used + 3
    k_cache = torch.full((num_blocks, block_size, kv_heads, head_dim), float("nan"), dtype=torch.bfloat16)
    v_cache = torch.full((num_blocks, block_size, kv_heads, v_head_dim), float("nan"), dtype=torch.bfloat16)
    ids = list(range(num_blocks))
    random.Random(seed).shuffle(ids)
    table = torch.tensor(ids[:used] + [0] * 2, dtype=torch.int32)  # padded, as the runner pads
    keys = torch.randn(seq_len, kv_heads, head_dim, generator=gen).bfloat16()
    values = torch.randn(seq_len, kv_heads, v_head_dim, generator=gen).bfloat16()
    for t in range(seq_len):
        k_cache[table[t // block_size], t % block_size] = keys[t]
        v_cache[table[t // block_size], t % block_size] = values[t]
    q = torch.randn(seq_len, heads, head_dim, generator=gen).bfloat16()
    return q, k_cache, v_cache, table, keys, values


def reference(q, keys, values, seq_len, scale):
    """float64: query i of n (position seq_len - n + i) over keys 0..its position; KV head h // G."""
    n, heads, _ = q.shape
    group = heads // keys.shape[1]
    k = keys.double().repeat_interleave(group, dim=1)
    v = values.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,lhd->hnl", q.double(), k) * scale
    rows = torch.arange(n)[:, None] + (seq_len - n)
    scores = scores.masked_fill(torch.arange(seq_len)[None, :] > rows, float("-inf"))
    return torch.einsum("hnl,lhd->nhd", scores.softmax(-1), v)


SHAPES = [  # heads, kv_heads, head_dim, v_head_dim, block_size
    (9, 3, 64, 64, 16),  # SmolLM2
    (4, 4, 32, 32, 8),
    (8, 2, 128, 128, 16),
    (4, 2, 64, 48, 16),  # values narrower than keys, and not a multiple of 32
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n,seq_len", [(1, 1), (5, 5), (40, 40), (250, 250), (17, 40), (100, 250), (3, 70)])
def test_matches_the_reference(shape, n, seq_len):
    heads, kv_heads, head_dim, v_head_dim, block_size = shape
    q, k_cache, v_cache, table, keys, values = make_case(seq_len, heads, kv_heads, head_dim, v_head_dim, block_size)
    q = q[seq_len - n:]
    scale = head_dim ** -0.5
    out = cpu.paged_prefill(q, k_cache, v_cache, table, seq_len, scale)
    assert out is not None and out.dtype == torch.bfloat16 and out.shape == (n, heads, v_head_dim)
    ref = reference(q, keys, values, seq_len, scale)
    # bf16 probabilities and a bf16 result: ~2^-8 relative each.
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max().item() < 2e-2


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_any_split_of_the_queries_gives_the_whole_prompts_bits(shape):
    """A prompt in chunks (or after a prefix-cache hit) gets the same bits as in one piece: a row
    depends only on its query, its position and the cache."""
    heads, kv_heads, head_dim, v_head_dim, block_size = shape
    seq_len = 203
    q, k_cache, v_cache, table, _, _ = make_case(seq_len, heads, kv_heads, head_dim, v_head_dim, block_size, seed=1)
    scale = head_dim ** -0.5
    whole = cpu.paged_prefill(q, k_cache, v_cache, table, seq_len, scale)
    for cuts in ([0, 1, 203], [0, 31, 32, 33, 203], [0, 100, 150, 203], [0, 7, 64, 65, 191, 203]):
        for a, b in zip(cuts, cuts[1:]):
            part = cpu.paged_prefill(q[a:b], k_cache, v_cache, table, b, scale)
            assert torch.equal(part, whole[a:b]), (cuts, a, b)


def test_declines_what_it_does_not_run():
    """None (torch's SDPA runs instead): fp32, head sizes the tiles do not take, very long contexts."""
    q, k_cache, v_cache, table, _, _ = make_case(40, 4, 2, 64, 64, 16)
    assert cpu.paged_prefill(q.float(), k_cache.float(), v_cache.float(), table, 40, 0.125) is None
    q16, k16, v16, t16, _, _ = make_case(40, 4, 2, 16, 16, 16)
    assert cpu.paged_prefill(q16, k16, v16, t16, 40, 0.25) is None
    q8, k8, v8, t8, _, _ = make_case(40, 4, 2, 64, 8, 16)  # Dv not a multiple of 16
    assert cpu.paged_prefill(q8, k8, v8, t8, 40, 0.125) is None
    long_len = 16385
    kc = torch.zeros(-(-long_len // 16), 16, 1, 32, dtype=torch.bfloat16)
    qq = torch.zeros(1, 1, 32, dtype=torch.bfloat16)
    tt = torch.arange(kc.shape[0], dtype=torch.int32)
    assert cpu.paged_prefill(qq, kc, kc, tt, long_len, 0.1) is None
    assert cpu.paged_prefill(qq, kc, kc, tt, long_len - 1, 0.1) is not None


def test_refuses_inputs_that_do_not_fit():
    q, k_cache, v_cache, table, _, _ = make_case(40, 4, 2, 64, 64, 16)
    with pytest.raises(RuntimeError, match="n <= seq_len"):
        cpu.paged_prefill(q, k_cache, v_cache, table, 39, 0.125)
    with pytest.raises(RuntimeError, match="out of range"):
        bad = table.clone()
        bad[1] = k_cache.shape[0]
        cpu.paged_prefill(q, k_cache, v_cache, bad, 40, 0.125)
    with pytest.raises(RuntimeError, match="block_table has 2 ids"):
        cpu.paged_prefill(q, k_cache, v_cache, table[:2], 40, 0.125)
    with pytest.raises(RuntimeError, match="multiple of num_kv_heads"):
        cpu.paged_prefill(q[:, :3].contiguous(), k_cache, v_cache, table, 40, 0.125)
    with pytest.raises(RuntimeError, match="contiguous heads"):
        cpu.paged_prefill(q.transpose(0, 1).contiguous().transpose(0, 1), k_cache, v_cache, table, 40, 0.125)
