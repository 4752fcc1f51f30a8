"""Triton reshape_and_cache: copy each new token's K/V rows into its paged-cache slot.

One program per token moves its [num_kv_heads, head_dim] key and [num_kv_heads, v_head_dim] value
rows into the layer's (key_cache, value_cache) pair. Negative slots are skipped (vLLM's padding
convention), so padded batches (graph-capture buckets) need no special case.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kb, stride_ks, stride_kch, stride_vb, stride_vs, stride_vch,
    BLOCK_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, V_HEAD_DIM: tl.constexpr,
    HEADS_PAD: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, V_HEAD_DIM_PAD: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    h = tl.arange(0, HEADS_PAD)
    d = tl.arange(0, HEAD_DIM_PAD)
    dv = tl.arange(0, V_HEAD_DIM_PAD)
    heads_ok = (h[:, None] < NUM_KV_HEADS) & ((tl.zeros([HEADS_PAD, 1], tl.int64) + slot) >= 0)
    k_mask = heads_ok & (d[None, :] < HEAD_DIM)
    v_mask = heads_ok & (dv[None, :] < V_HEAD_DIM)
    k = tl.load(key_ptr + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=k_mask)
    v = tl.load(value_ptr + t * stride_vt + h[:, None] * stride_vh + dv[None, :], mask=v_mask)
    k_dst = k_cache_ptr + block * stride_kb + offset * stride_ks + h[:, None] * stride_kch + d[None, :]
    v_dst = v_cache_ptr + block * stride_vb + offset * stride_vs + h[:, None] * stride_vch + dv[None, :]
    tl.store(k_dst, k.to(k_cache_ptr.dtype.element_ty), mask=k_mask)
    tl.store(v_dst, v.to(v_cache_ptr.dtype.element_ty), mask=v_mask)


def reshape_and_cache(
    key: torch.Tensor,  # [T, num_kv_heads, head_dim]
    value: torch.Tensor,  # [T, num_kv_heads, v_head_dim]
    kv_cache,  # (key_cache [num_blocks, block_size, num_kv_heads, head_dim], value_cache [..., v_head_dim])
    slot_mapping: torch.Tensor,  # [T] int32/int64; < 0 skips the token
) -> None:
    """Writes key[t]/value[t] into the key/value cache at slot_mapping[t], in place."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    key = key if key.stride(-1) == 1 else key.contiguous()
    value = value if value.stride(-1) == 1 else value.contiguous()
    kc, vc = kv_cache
    if kc.stride(-1) != 1 or vc.stride(-1) != 1:
        raise ValueError("the caches' head dims must be contiguous")
    v_head_dim = value.shape[-1]
    _reshape_and_cache_kernel[(num_tokens,)](
        key, value, kc, vc, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2),
        BLOCK_SIZE=kc.shape[1], NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, V_HEAD_DIM=v_head_dim,
        HEADS_PAD=triton.next_power_of_2(num_kv_heads), HEAD_DIM_PAD=triton.next_power_of_2(head_dim),
        V_HEAD_DIM_PAD=triton.next_power_of_2(v_head_dim),
    )
