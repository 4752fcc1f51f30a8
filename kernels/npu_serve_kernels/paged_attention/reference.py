"""Torch reference for paged attention: gather each request's blocks, then causal SDPA.

Deliberately plain (one request at a time, float32 math) so that it can serve as the oracle for the
device kernels and backends.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_request_kv(
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    block_table_row: torch.Tensor,  # [max_blocks] int, padded with 0
    seq_len: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The request's first seq_len keys and values, each [seq_len, num_kv_heads, head_dim]."""
    block_size = kv_cache.shape[2]
    num_blocks = -(-seq_len // block_size)
    blocks = block_table_row[:num_blocks].to(device=kv_cache.device, dtype=torch.long)
    k = kv_cache[0, blocks].flatten(0, 1)[:seq_len]
    v = kv_cache[1, blocks].flatten(0, 1)[:seq_len]
    return k, v


def causal_attention(
    q: torch.Tensor,  # [q_len, num_heads, head_dim]
    k: torch.Tensor,  # [seq_len, num_kv_heads, head_dim]
    v: torch.Tensor,  # [seq_len, num_kv_heads, head_dim]
    scale: float,
) -> torch.Tensor:  # [q_len, num_heads, head_dim], float32
    """The q_len queries are the last q_len positions: query i sees keys 0 .. seq_len - q_len + i."""
    q_len, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    i = torch.arange(q_len, device=q.device)[:, None]
    j = torch.arange(seq_len, device=q.device)[None, :]
    allowed = j <= (seq_len - q_len) + i
    out = F.scaled_dot_product_attention(
        q.float().transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=allowed, scale=scale
    )
    return out.transpose(0, 1)


def paged_attention_ref(
    query: torch.Tensor,  # [T, num_heads, head_dim]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [B, max_blocks] int
    query_start_loc: list[int],  # [B+1], cumulative query lengths
    seq_lens: list[int],  # [B], context length including the new tokens
    scale: float,
) -> torch.Tensor:  # [T, num_heads, head_dim], query.dtype
    """Causal attention of each request's new tokens over its whole paged context.

    The new tokens' K/V must already be in the cache. Tokens past query_start_loc[-1] (padding)
    come back as zeros.
    """
    out = torch.zeros_like(query)
    for r, seq_len in enumerate(seq_lens):
        start, end = query_start_loc[r], query_start_loc[r + 1]
        if end == start:
            continue
        k, v = gather_request_kv(kv_cache, block_tables[r], seq_len)
        out[start:end] = causal_attention(query[start:end], k, v, scale).to(query.dtype)
    return out
