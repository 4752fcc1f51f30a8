"""Triton paged attention: a decode kernel and a varlen prefill kernel over the paged KV cache.

Cache per layer: a (key_cache, value_cache) pair, `[num_blocks, block_size, num_kv_heads, head_dim]`
and `[..., v_head_dim]` (the value head size may differ: MLA); a token at position p of a request
lives in block `block_tables[req, p // block_size]`, offset `p % block_size`. Both kernels
use the online softmax (running max and sum in float32) over KV tiles of BLOCK_N tokens; each token
of a tile looks its block up on its own, so BLOCK_N is independent of the cache's block size.

- decode: one program per (request, KV head); the QUERIES_PER_KV query heads that share the KV head
  form the rows of one tile (padded to 16, the smallest `tl.dot` shape), so each K/V tile is read
  once for the whole GQA group.
- prefill: one program per (request, BLOCK_M query tile, query head), causal with the offset of the
  tokens already cached: query i of a request with q_len new tokens sees keys <= seq_len - q_len + i.

Layer features are compile-time switches (a plain layer compiles to the plain kernel): a sliding
window w (keys > position - w; the loops start at the first key any row of the tile sees), a logit
softcap (scores -> softcap * tanh(scores / softcap)), and per-head sinks (the online softmax starts
with the sink as its max and 1 as its sum, so the sink joins the denominator and carries no value).

float32 runs `tl.dot` in IEEE mode (no TF32), so results match the torch reference to ~1e-6;
bf16/fp16 run native dots with float32 accumulation.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Under TRITON_INTERPRET=1 (our CPU test mode) triton 3.9 computes bf16 `tl.dot` wrongly, so there
# every dot upcasts to float32; on a GPU bf16/fp16 dots stay native.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Prefill tile sizes (BLOCK_M queries, BLOCK_N keys) under the interpreter; a test sets BLOCK_M >
# BLOCK_N to reach tiles where a windowed query row sees no key at all (as on a GPU with 64 x 32).
_INTERPRET_PREFILL_TILES = (16, 32)


@triton.jit
def _dot(a, b, FP32_DOT: tl.constexpr):
    if FP32_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _attend_tile(
    q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row_ptr, start, kvh, seq_len, upper, lower,
    scale, softcap, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, V_HEAD_DIM: tl.constexpr, V_HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, FP32_DOT: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
):
    """One online-softmax step over keys start .. start+BLOCK_N; each query row sees the keys from
    lower[row] (with a window) to upper[row] (seq_len - 1 for decode)."""
    n = start + tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM_PAD)
    dv = tl.arange(0, V_HEAD_DIM_PAD)
    n_ok = n < seq_len
    block = tl.load(bt_row_ptr + n // BLOCK_SIZE, mask=n_ok, other=0).to(tl.int64)
    offset = (n % BLOCK_SIZE).to(tl.int64)
    k = tl.load(
        k_cache_ptr + block[:, None] * stride_kb + offset[:, None] * stride_ks + kvh * stride_kh + d[None, :],
        mask=n_ok[:, None] & (d[None, :] < HEAD_DIM), other=0.0,
    )
    s = _dot(q, tl.trans(k), FP32_DOT) * scale
    if HAS_SOFTCAP:
        # softcap * tanh(s / softcap), with tanh(x) = 1 - 2 / (e^(2x) + 1): exact at both ends
        # (e^(2x) = inf gives 1, 0 gives -1) and needs nothing beyond tl.exp.
        s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
    visible = (n[None, :] <= upper[:, None]) & n_ok[None, :]
    if HAS_WINDOW:
        visible = visible & (n[None, :] >= lower[:, None])
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no key yet (a window starting past this tile) keeps m = -inf: shift by 0
    # instead, so that exp(-inf - -inf) never makes a NaN.
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_shift)
    p = tl.exp(s - m_shift[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(
        v_cache_ptr + block[:, None] * stride_vb + offset[:, None] * stride_vs + kvh * stride_vh + dv[None, :],
        mask=n_ok[:, None] & (dv[None, :] < V_HEAD_DIM), other=0.0,
    )
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, FP32_DOT)
    return m_new, l_i, acc


@triton.jit
def _paged_decode_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, sinks_ptr, scale, softcap, window,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    QUERIES_PER_KV: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, V_HEAD_DIM: tl.constexpr, V_HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, FP32_DOT: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    req = tl.program_id(0)
    kvh = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + req)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM_PAD)
    dv = tl.arange(0, V_HEAD_DIM_PAD)
    heads = kvh * QUERIES_PER_KV + g
    row_ok = g < QUERIES_PER_KV
    q = tl.load(q_ptr + req * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None] & (d[None, :] < HEAD_DIM), other=0.0)

    if HAS_SINKS:  # the sink is one more logit with no value: start the running max and sum with it
        m_i = tl.load(sinks_ptr + heads, mask=row_ok, other=float("-inf")).to(tl.float32)
        l_i = tl.where(row_ok, 1.0, 0.0)
    else:
        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, V_HEAD_DIM_PAD], tl.float32)
    upper = tl.zeros([GROUP_PAD], tl.int32) + seq_len - 1
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(seq_len - window, 0)
    lower = tl.zeros([GROUP_PAD], tl.int32) + lo
    bt_row_ptr = block_tables_ptr + req.to(tl.int64) * stride_bt
    for start in range(lo, seq_len, BLOCK_N):
        m_i, l_i, acc = _attend_tile(
            q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row_ptr, start, kvh, seq_len, upper, lower,
            scale, softcap, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
            HEAD_DIM, HEAD_DIM_PAD, V_HEAD_DIM, V_HEAD_DIM_PAD, BLOCK_SIZE, BLOCK_N, FP32_DOT, HAS_WINDOW, HAS_SOFTCAP,
        )
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # padding rows saw no key: keep them finite
    tl.store(out_ptr + req * stride_ot + heads[:, None] * stride_oh + dv[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (dv[None, :] < V_HEAD_DIM))


@triton.jit
def _paged_prefill_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr, sinks_ptr,
    scale, softcap, window, req_offset,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    QUERIES_PER_KV: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    V_HEAD_DIM: tl.constexpr, V_HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP32_DOT: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    req = tl.program_id(0) + req_offset
    m_block = tl.program_id(1)
    head = tl.program_id(2)
    kvh = head // QUERIES_PER_KV
    q_start = tl.load(query_start_loc_ptr + req)
    q_len = tl.load(query_start_loc_ptr + req + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + req)
    context = seq_len - q_len  # tokens cached before this step

    m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_DIM_PAD)
    dv = tl.arange(0, V_HEAD_DIM_PAD)
    rows_ok = m < q_len
    tok = (q_start + m).to(tl.int64)
    q = tl.load(q_ptr + tok[:, None] * stride_qt + head * stride_qh + d[None, :],
                mask=rows_ok[:, None] & (d[None, :] < HEAD_DIM), other=0.0)

    if HAS_SINKS:  # the sink is one more logit with no value: start the running max and sum with it
        m_i = tl.zeros([BLOCK_M], tl.float32) + tl.load(sinks_ptr + head).to(tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32) + 1.0
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, V_HEAD_DIM_PAD], tl.float32)
    upper = context + m
    lower = upper - window + 1  # used only with a window
    # Causal: this query tile sees nothing past its last row's position, and with a window nothing
    # before its first row's window. Tiles past q_len (the grid is sized for the longest request)
    # skip the loop; their rows are masked out of the store.
    kv_end = tl.minimum(seq_len, context + (m_block + 1) * BLOCK_M)
    kv_end = tl.where(m_block * BLOCK_M < q_len, kv_end, 0)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(context + m_block * BLOCK_M - window + 1, 0)
    bt_row_ptr = block_tables_ptr + req.to(tl.int64) * stride_bt
    for start in range(lo, kv_end, BLOCK_N):
        m_i, l_i, acc = _attend_tile(
            q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row_ptr, start, kvh, seq_len, upper, lower,
            scale, softcap, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
            HEAD_DIM, HEAD_DIM_PAD, V_HEAD_DIM, V_HEAD_DIM_PAD, BLOCK_SIZE, BLOCK_N, FP32_DOT, HAS_WINDOW, HAS_SOFTCAP,
        )
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # padding rows saw no key: keep them finite
    tl.store(out_ptr + tok[:, None] * stride_ot + head * stride_oh + dv[None, :],
             out.to(out_ptr.dtype.element_ty), mask=rows_ok[:, None] & (dv[None, :] < V_HEAD_DIM))


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _fp32_dot(dtype: torch.dtype) -> bool:
    return _INTERPRET or dtype == torch.float32


def _cache_strides(kv_cache) -> tuple[int, ...]:
    key_cache, value_cache = kv_cache
    if key_cache.stride(-1) != 1 or value_cache.stride(-1) != 1:
        raise ValueError("the caches' head dims must be contiguous")
    return (key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
            value_cache.stride(0), value_cache.stride(1), value_cache.stride(2))


def _features(query: torch.Tensor, window: int | None, softcap: float | None, sinks: torch.Tensor | None) -> dict:
    """Runtime values and compile-time switches of a layer's features (a plain layer compiles to
    the same kernel as before features existed)."""
    if sinks is not None and (sinks.shape != (query.shape[1],) or sinks.device != query.device):
        raise ValueError(f"sinks must be one logit per query head ({query.shape[1]}) on the query's device")
    return dict(
        sinks=sinks.float().contiguous() if sinks is not None else query,  # any pointer when unused
        softcap=float(softcap or 1.0), window=int(window or 0),
        flags=dict(HAS_WINDOW=window is not None, HAS_SOFTCAP=softcap is not None, HAS_SINKS=sinks is not None),
    )


def paged_decode(
    out: torch.Tensor,  # [B, num_heads, v_head_dim], written
    query: torch.Tensor,  # [B, num_heads, head_dim], one new token per request
    kv_cache,  # (key_cache [num_blocks, block_size, Hkv, head_dim], value_cache [..., v_head_dim])
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32, context length including the new token
    scale: float,
    window: int | None = None,  # the new token sees only the last `window` keys
    softcap: float | None = None,  # scores -> softcap * tanh(scores / softcap)
    sinks: torch.Tensor | None = None,  # [num_heads] sink logits (softmax denominator only)
) -> None:
    """Attention of each request's single new token over its paged context."""
    num_reqs, num_heads, head_dim = query.shape
    if num_reqs == 0:
        return
    key_cache, value_cache = kv_cache
    _, block_size, num_kv_heads, _ = key_cache.shape
    v_head_dim = value_cache.shape[-1]
    group = num_heads // num_kv_heads
    query = query if query.stride(-1) == 1 else query.contiguous()
    f = _features(query, window, softcap, sinks)
    _paged_decode_kernel[(num_reqs, num_kv_heads)](
        out, query, key_cache, value_cache, block_tables, seq_lens, f["sinks"], float(scale), f["softcap"],
        f["window"], query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        *_cache_strides(kv_cache), block_tables.stride(0),
        QUERIES_PER_KV=group, GROUP_PAD=_pow2_at_least_16(group),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=_pow2_at_least_16(head_dim),
        V_HEAD_DIM=v_head_dim, V_HEAD_DIM_PAD=_pow2_at_least_16(v_head_dim),
        BLOCK_SIZE=block_size, BLOCK_N=32 if _INTERPRET else 64, FP32_DOT=_fp32_dot(query.dtype), **f["flags"],
    )


def paged_prefill(
    out: torch.Tensor,  # [T, num_heads, v_head_dim], rows of the requests handled here are written
    query: torch.Tensor,  # [T, num_heads, head_dim]
    kv_cache,  # (key_cache, value_cache), as for paged_decode
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32
    query_start_loc: torch.Tensor,  # [B+1] int32, token offsets into query/out
    scale: float,
    first_req: int,  # handle requests first_req .. first_req + num_reqs - 1
    num_reqs: int,
    max_query_len: int,  # longest query among those requests (sizes the grid)
    window: int | None = None,  # query at position p sees keys > p - window
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> None:
    """Causal attention of each request's new tokens (a prefill or a chunk of one) over its context."""
    if num_reqs == 0 or max_query_len == 0:
        return
    _, num_heads, head_dim = query.shape
    key_cache, value_cache = kv_cache
    _, block_size, num_kv_heads, _ = key_cache.shape
    v_head_dim = value_cache.shape[-1]
    query = query if query.stride(-1) == 1 else query.contiguous()
    if _INTERPRET:
        (block_m, block_n), warps = _INTERPRET_PREFILL_TILES, 4
    else:
        block_m, block_n = (64, 64) if max(head_dim, v_head_dim) <= 64 else (64, 32)
        warps = 4
    f = _features(query, window, softcap, sinks)
    grid = (num_reqs, triton.cdiv(max_query_len, block_m), num_heads)
    _paged_prefill_kernel[grid](
        out, query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, f["sinks"],
        float(scale), f["softcap"], f["window"], first_req,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        *_cache_strides(kv_cache), block_tables.stride(0),
        QUERIES_PER_KV=num_heads // num_kv_heads, HEAD_DIM=head_dim,
        HEAD_DIM_PAD=_pow2_at_least_16(head_dim), V_HEAD_DIM=v_head_dim, V_HEAD_DIM_PAD=_pow2_at_least_16(v_head_dim),
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n, FP32_DOT=_fp32_dot(query.dtype), num_warps=warps,
        **f["flags"],
    )
