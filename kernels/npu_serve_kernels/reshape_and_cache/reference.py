"""Torch reference for reshape_and_cache: scatter new K/V rows into their cache slots."""

from __future__ import annotations

import torch


def reshape_and_cache_ref(
    key: torch.Tensor,  # [T, num_kv_heads, head_dim]
    value: torch.Tensor,  # [T, num_kv_heads, head_dim]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim], contiguous
    slot_mapping: torch.Tensor,  # [T] int, slot = block * block_size + offset; < 0 means skip
) -> None:
    """Writes key[t] / value[t] to slot slot_mapping[t] of kv_cache[0] / kv_cache[1], in place.

    Negative slots (vLLM's padding convention) are skipped, as the device kernels do.
    """
    _, num_blocks, block_size, num_kv_heads, head_dim = kv_cache.shape
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].to(torch.long)
    flat = kv_cache.view(2, num_blocks * block_size, num_kv_heads, head_dim)
    flat[0].index_copy_(0, slots, key[keep].to(kv_cache.dtype))
    flat[1].index_copy_(0, slots, value[keep].to(kv_cache.dtype))
