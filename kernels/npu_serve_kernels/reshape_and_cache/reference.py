"""Torch reference for reshape_and_cache: scatter new K/V rows into their cache slots."""

from __future__ import annotations

import torch


def reshape_and_cache_ref(
    key: torch.Tensor,  # [T, num_kv_heads, head_dim]
    value: torch.Tensor,  # [T, num_kv_heads, v_head_dim]
    kv_cache,  # (key_cache, value_cache) [num_blocks, block_size, num_kv_heads, *], or one stacked (2, ...) tensor
    slot_mapping: torch.Tensor,  # [T] int, slot = block * block_size + offset; < 0 means skip
) -> None:
    """Writes key[t] / value[t] to slot slot_mapping[t] of the key / value cache, in place.

    Negative slots (vLLM's padding convention) are skipped, as the device kernels do.
    """
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].to(torch.long)
    for cache, new in zip(kv_cache, (key, value)):
        flat = cache.view(-1, *cache.shape[2:])
        flat.index_copy_(0, slots, new[keep].to(cache.dtype))
