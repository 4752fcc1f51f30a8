"""The C++ CPU paged-decode kernel against a plain gather + softmax reference in float64, with and
without a sliding window, a logit softcap, sinks and values narrower or wider than keys.

Caches hold a large value in the null block 0 (where padded table entries point) and in unused
blocks, and NaN before each request's window, so a kernel that reads past seq_len, follows padding
or reads outside its window shows it at once.
"""

from __future__ import annotations

import random

import pytest
import torch

from npu_serve_kernels.paged_attention import cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason="C++ CPU decode kernel could not be built here")


def reference(q, k_cache, v_cache, tables, lens, scale, window=None, softcap=None, sinks=None):
    """float64: per request, gather its tokens (the last `window` of them), expand KV heads to query
    heads, softmax(softcap(q k^T)) v, with per-head sink logits in the denominator."""
    nd, num_heads, _ = q.shape
    group = num_heads // k_cache.shape[2]
    block_size = k_cache.shape[1]
    out = torch.zeros(nd, num_heads, v_cache.shape[-1], dtype=torch.float64)
    for r in range(nd):
        n = int(lens[r])
        if n == 0:
            continue
        blocks = tables[r, : -(-n // block_size)].long()
        first = max(0, n - window) if window else 0
        k = k_cache[blocks].flatten(0, 1)[first:n].double().repeat_interleave(group, dim=1)  # [n, H, D]
        v = v_cache[blocks].flatten(0, 1)[first:n].double().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[r].double(), k) * scale
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        if sinks is not None:
            scores = torch.cat([scores, sinks.double()[:, None]], dim=1)
        probs = scores.softmax(-1)[:, : n - first]
        out[r] = torch.einsum("hn,nhd->hd", probs, v)
    return out


def make(nd, heads, kv_heads, head_dim, block_size, lens, dtype, seed=0, v_head_dim=None):
    """q, the (key_cache, value_cache) pair, block tables and lengths; unused blocks and the slots
    past each request's last token are poisoned."""
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
    caches = []
    for d in (head_dim, v_head_dim or head_dim):
        cache = torch.randn(num_blocks, block_size, kv_heads, d, generator=gen).to(dtype)
        cache[0] = 100.0
        for b in order[used:]:
            cache[b] = -100.0
        # Poison the slots after each request's last token in its last block.
        for r, n in enumerate(lens):
            if n % block_size:
                cache[int(tables[r, need[r] - 1]), n % block_size :] = 50.0
        caches.append(cache)
    q = torch.randn(nd, heads, head_dim, generator=gen).to(dtype)
    return q, tuple(caches), tables, torch.tensor(lens, dtype=torch.int32)


def poison_before_window(kv, tables, lens, window):
    """NaN in every key and value a request's window excludes: a kernel that reads one shows it."""
    block_size = kv[0].shape[1]
    for r, n in enumerate(lens.tolist()):
        for p in range(max(0, n - window)):
            for cache in kv:
                cache[int(tables[r, p // block_size]), p % block_size] = float("nan")


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


def test_int64_tables_and_views_of_a_stacked_cache_accepted():
    """The two halves of one stacked (2, ...) cache are a valid pair too, and metadata may be int64."""
    q, kv, tables, lens = make(3, 9, 3, 64, 16, [7, 16, 33], torch.bfloat16)
    stacked = torch.stack(kv)
    out = cpu.paged_decode(q, stacked[0], stacked[1], tables.long(), lens.long(), 0.125)
    torch.testing.assert_close(out.double(), reference(q, kv[0], kv[1], tables, lens, 0.125), atol=2e-2, rtol=2e-2)


# heads, kv_heads, head_dim, v_head_dim, block_size, dtype: the compiled-in paths (D 64/128, G 1-8), the
# generic one, MLA-like value sizes (DeepSeek-V3's 192/128 and the tiny test model's 24/12).
FEATURE_SHAPES = [
    (9, 3, 64, 64, 16, torch.float32),
    (8, 2, 128, 128, 16, torch.bfloat16),
    (4, 2, 72, 72, 24, torch.float32),
    (4, 4, 192, 128, 16, torch.float32),
    (4, 4, 24, 12, 16, torch.bfloat16),
    (10, 2, 64, 64, 8, torch.float32),
]


@pytest.mark.parametrize("heads,kv_heads,head_dim,v_head_dim,block_size,dtype", FEATURE_SHAPES)
@pytest.mark.parametrize("window,softcap,sinks", [
    (None, None, False),
    (1, None, False),
    (5, None, False),
    (16, None, False),
    (37, 2.0, False),
    (None, 1.5, False),
    (None, None, True),
    (19, 3.0, True),
])
@pytest.mark.parametrize("threads", [1, 2])
def test_window_softcap_sinks_and_value_sizes(heads, kv_heads, head_dim, v_head_dim, block_size, dtype, window,
                                             softcap, sinks, threads):
    """Against the float64 reference; every key or value outside a request's window is NaN, so a
    kernel that reads one fails."""
    bs = block_size
    lens = [1, bs, 2 * bs + 3, bs - 1, 3 * bs + 5, 2, 37, 130]
    q, kv, tables, seq_lens = make(len(lens), heads, kv_heads, head_dim, bs, lens, dtype, seed=heads + head_dim,
                                   v_head_dim=v_head_dim)
    plain = reference(q, kv[0], kv[1], tables, seq_lens, 3.0 * head_dim**-0.5)
    if window:
        poison_before_window(kv, tables, seq_lens, window)
    sink = torch.randn(heads, generator=torch.Generator().manual_seed(7)) * 3 if sinks else None
    scale = 3.0 * head_dim**-0.5  # large scores, so that the softcap really bites
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = cpu.paged_decode(q, kv[0], kv[1], tables, seq_lens, scale, window, softcap, sink)
    finally:
        torch.set_num_threads(prev)
    assert out.shape == (len(lens), heads, v_head_dim) and out.dtype == dtype
    want = reference(q, kv[0], kv[1], tables, seq_lens, scale, window, softcap, sink)
    atol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), want, atol=atol, rtol=atol)
    if softcap or window or sinks:  # the feature changes the result (else the test would prove nothing)
        assert (want - plain).abs().max() > 10 * atol


@pytest.mark.parametrize("head_dim,block_size", [(64, 16), (72, 16), (128, 8)])
def test_window_is_bitwise_the_same_as_its_keys_alone(head_dim, block_size):
    """A window that starts on a block boundary gives exactly (bitwise) what the same kernel gives
    for a request holding only the window's blocks: windowing changes what is read, not how."""
    bs, window = block_size, 2 * block_size
    lens = [5 * bs, 3 * bs + 7, 4 * bs]
    q, kv, tables, seq_lens = make(len(lens), 8, 2, head_dim, bs, lens, torch.float32, seed=3)
    out = cpu.paged_decode(q, kv[0], kv[1], tables, seq_lens, 0.2, window)
    for r, n in enumerate(lens):
        skip = max(0, n - window) // bs
        if (n - window) % bs and n > window:
            continue  # the window starts mid-block: no block-aligned twin
        alone = cpu.paged_decode(q[r : r + 1], kv[0], kv[1], tables[r : r + 1, skip:].contiguous(),
                                 torch.tensor([n - skip * bs], dtype=torch.int32), 0.2)
        assert torch.equal(out[r : r + 1], alone), r
    wide = cpu.paged_decode(q, kv[0], kv[1], tables, seq_lens, 0.2, 10 * bs)
    assert torch.equal(wide, cpu.paged_decode(q, kv[0], kv[1], tables, seq_lens, 0.2))


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda a: a.update(seq_lens=torch.tensor([10_000, 1, 1], dtype=torch.int32)), "does not fit"),
        (lambda a: a["tables"].__setitem__((0, 0), 10_000), "out of range"),
        (lambda a: a.update(q=a["q"].float()), "dtype"),
        (lambda a: a.update(q=a["q"][:, :3]), "multiple"),
        (lambda a: a.update(k=a["k"].transpose(1, 2).contiguous().transpose(1, 2)), "contiguous"),
        (lambda a: a.update(v=a["v"][:, :8].contiguous()), "v_cache"),
        (lambda a: a.update(window=-1), "window"),
        (lambda a: a.update(sinks=torch.zeros(3)), "sinks"),
    ],
)
def test_bad_input_raises(mutate, message):
    q, kv, tables, lens = make(3, 4, 2, 64, 16, [7, 16, 33], torch.bfloat16)
    args = {"q": q, "k": kv[0], "v": kv[1], "tables": tables.clone(), "seq_lens": lens, "window": None,
            "sinks": None}
    mutate(args)
    with pytest.raises(RuntimeError, match=message):
        cpu.paged_decode(args["q"], args["k"], args["v"], args["tables"], args["seq_lens"], 0.125,
                         window=args["window"], sinks=args["sinks"])


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (16, 2, 128), (10, 2, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_request_gets_the_same_bits_alone_and_in_a_batch(heads, kv_heads, head_dim, dtype):
    """A step of many requests gives each task all of a request's KV heads, a step of a few one head
    each (cpu_decode.h, kWholeRequestTasks): each head's arithmetic must not change with that, so a
    request's output is bitwise the same whatever else is in the step."""
    lens = [300, 17, 64, 1, 33, 160, 2, 95, 48, 250]
    q, kv, tables, seq_lens = make(len(lens), heads, kv_heads, head_dim, 16, lens, dtype, seed=11)
    batch = cpu.paged_decode(q, kv[0], kv[1], tables, seq_lens, 0.125)
    for r in range(len(lens)):
        alone = cpu.paged_decode(q[r : r + 1], kv[0], kv[1], tables[r : r + 1], seq_lens[r : r + 1], 0.125)
        assert torch.equal(batch[r : r + 1], alone), r
