"""Triton paged attention: a decode kernel and a varlen prefill kernel over the paged KV cache.

Cache per layer: `(2, num_blocks, block_size, num_kv_heads, head_dim)`; a token at position p of a
request lives in block `block_tables[req, p // block_size]`, offset `p % block_size`. Both kernels
use the online softmax (running max and sum in float32) over KV tiles of BLOCK_N tokens; each token
of a tile looks its block up on its own, so BLOCK_N is independent of the cache's block size.

- decode: one program per (request, KV head); the QUERIES_PER_KV query heads that share the KV head
  form the rows of one tile (padded to 16, the smallest `tl.dot` shape), so each K/V tile is read
  once for the whole GQA group.
- prefill: one program per (request, BLOCK_M query tile, query head), causal with the offset of the
  tokens already cached: query i of a request with q_len new tokens sees keys <= seq_len - q_len + i.

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


@triton.jit
def _dot(a, b, FP32_DOT: tl.constexpr):
    if FP32_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _attend_tile(
    q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row_ptr, start, kvh, seq_len, allowed_bound,
    scale, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, FP32_DOT: tl.constexpr,
):
    """One online-softmax step over keys start .. start+BLOCK_N; allowed_bound[row] is the last key
    position each query row may see (seq_len - 1 for decode)."""
    n = start + tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM_PAD)
    n_ok = n < seq_len
    kv_mask = n_ok[:, None] & (d[None, :] < HEAD_DIM)
    block = tl.load(bt_row_ptr + n // BLOCK_SIZE, mask=n_ok, other=0).to(tl.int64)
    offset = (n % BLOCK_SIZE).to(tl.int64)
    k = tl.load(
        k_cache_ptr + block[:, None] * stride_kb + offset[:, None] * stride_ks + kvh * stride_kh + d[None, :],
        mask=kv_mask, other=0.0,
    )
    s = _dot(q, tl.trans(k), FP32_DOT) * scale
    visible = (n[None, :] <= allowed_bound[:, None]) & n_ok[None, :]
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(
        v_cache_ptr + block[:, None] * stride_vb + offset[:, None] * stride_vs + kvh * stride_vh + d[None, :],
        mask=kv_mask, other=0.0,
    )
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, FP32_DOT)
    return m_new, l_i, acc


@triton.jit
def _paged_decode_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, scale,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    QUERIES_PER_KV: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, FP32_DOT: tl.constexpr,
):
    req = tl.program_id(0)
    kvh = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + req)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM_PAD)
    heads = kvh * QUERIES_PER_KV + g
    row_mask = (g[:, None] < QUERIES_PER_KV) & (d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + req * stride_qt + heads[:, None] * stride_qh + d[None, :], mask=row_mask, other=0.0)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], tl.float32)
    bound = tl.zeros([GROUP_PAD], tl.int32) + seq_len - 1
    bt_row_ptr = block_tables_ptr + req.to(tl.int64) * stride_bt
    for start in range(0, seq_len, BLOCK_N):
        m_i, l_i, acc = _attend_tile(
            q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row_ptr, start, kvh, seq_len, bound,
            scale, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
            HEAD_DIM, HEAD_DIM_PAD, BLOCK_SIZE, BLOCK_N, FP32_DOT,
        )
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # padding rows saw no key: keep them finite
    tl.store(out_ptr + req * stride_ot + heads[:, None] * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def _paged_prefill_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
    scale, req_offset,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    QUERIES_PER_KV: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP32_DOT: tl.constexpr,
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
    row_mask = (m[:, None] < q_len) & (d[None, :] < HEAD_DIM)
    tok = (q_start + m).to(tl.int64)
    q = tl.load(q_ptr + tok[:, None] * stride_qt + head * stride_qh + d[None, :], mask=row_mask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    bound = context + m
    # Causal: this query tile sees nothing past its last row's position. Tiles past q_len (the grid
    # is sized for the longest request) skip the loop; their rows are masked out of the store.
    kv_end = tl.minimum(seq_len, context + (m_block + 1) * BLOCK_M)
    kv_end = tl.where(m_block * BLOCK_M < q_len, kv_end, 0)
    bt_row_ptr = block_tables_ptr + req.to(tl.int64) * stride_bt
    for start in range(0, kv_end, BLOCK_N):
        m_i, l_i, acc = _attend_tile(
            q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row_ptr, start, kvh, seq_len, bound,
            scale, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
            HEAD_DIM, HEAD_DIM_PAD, BLOCK_SIZE, BLOCK_N, FP32_DOT,
        )
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # padding rows saw no key: keep them finite
    tl.store(out_ptr + tok[:, None] * stride_ot + head * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask)


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _fp32_dot(dtype: torch.dtype) -> bool:
    return _INTERPRET or dtype == torch.float32


def _cache_strides(kv_cache: torch.Tensor) -> tuple[int, ...]:
    if kv_cache.stride(-1) != 1:
        raise ValueError("kv_cache's head_dim must be contiguous")
    kc, vc = kv_cache[0], kv_cache[1]
    return (kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2))


def paged_decode(
    out: torch.Tensor,  # [B, num_heads, head_dim], written
    query: torch.Tensor,  # [B, num_heads, head_dim], one new token per request
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32, context length including the new token
    scale: float,
) -> None:
    """Attention of each request's single new token over its whole paged context."""
    num_reqs, num_heads, head_dim = query.shape
    if num_reqs == 0:
        return
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    group = num_heads // num_kv_heads
    query = query if query.stride(-1) == 1 else query.contiguous()
    _paged_decode_kernel[(num_reqs, num_kv_heads)](
        out, query, kv_cache[0], kv_cache[1], block_tables, seq_lens, float(scale),
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        *_cache_strides(kv_cache), block_tables.stride(0),
        QUERIES_PER_KV=group, GROUP_PAD=_pow2_at_least_16(group),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=_pow2_at_least_16(head_dim),
        BLOCK_SIZE=block_size, BLOCK_N=32 if _INTERPRET else 64, FP32_DOT=_fp32_dot(query.dtype),
    )


def paged_prefill(
    out: torch.Tensor,  # [T, num_heads, head_dim], rows of the requests handled here are written
    query: torch.Tensor,  # [T, num_heads, head_dim]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    seq_lens: torch.Tensor,  # [B] int32
    query_start_loc: torch.Tensor,  # [B+1] int32, token offsets into query/out
    scale: float,
    first_req: int,  # handle requests first_req .. first_req + num_reqs - 1
    num_reqs: int,
    max_query_len: int,  # longest query among those requests (sizes the grid)
) -> None:
    """Causal attention of each request's new tokens (a prefill or a chunk of one) over its context."""
    if num_reqs == 0 or max_query_len == 0:
        return
    _, num_heads, head_dim = query.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    query = query if query.stride(-1) == 1 else query.contiguous()
    if _INTERPRET:
        block_m, block_n, warps = 16, 32, 4
    else:
        block_m, block_n = (64, 64) if head_dim <= 64 else (64, 32)
        warps = 4
    grid = (num_reqs, triton.cdiv(max_query_len, block_m), num_heads)
    _paged_prefill_kernel[grid](
        out, query, kv_cache[0], kv_cache[1], block_tables, seq_lens, query_start_loc,
        float(scale), first_req,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        *_cache_strides(kv_cache), block_tables.stride(0),
        QUERIES_PER_KV=num_heads // num_kv_heads, HEAD_DIM=head_dim,
        HEAD_DIM_PAD=_pow2_at_least_16(head_dim), BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=block_n, FP32_DOT=_fp32_dot(query.dtype), num_warps=warps,
    )
