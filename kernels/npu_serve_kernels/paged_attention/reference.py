"""Torch reference for paged attention: gather each request's blocks, then causal attention.

Deliberately plain (one request at a time, float32 math, every step written out) so that it can
serve as the oracle for the device kernels and backends. Covers the layer features the backends
implement: a sliding window (a query at position p sees keys > p - window), a logit softcap
(scores -> softcap * tanh(scores / softcap)), per-head sink logits (in the softmax's denominator
only), and values with another head size than keys.
"""

from __future__ import annotations

import torch


def gather_request_kv(
    kv_cache,  # (key_cache, value_cache): [num_blocks, block_size, num_kv_heads, head_dim / v_head_dim]
    block_table_row: torch.Tensor,  # [max_blocks] int, padded with 0
    seq_len: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The request's first seq_len keys and values, [seq_len, num_kv_heads, head_dim / v_head_dim]."""
    key_cache, value_cache = kv_cache
    block_size = key_cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    blocks = block_table_row[:num_blocks].to(device=key_cache.device, dtype=torch.long)
    k = key_cache[blocks].flatten(0, 1)[:seq_len]
    v = value_cache[blocks].flatten(0, 1)[:seq_len]
    return k, v


def causal_attention(
    q: torch.Tensor,  # [q_len, num_heads, head_dim]
    k: torch.Tensor,  # [seq_len, num_kv_heads, head_dim]
    v: torch.Tensor,  # [seq_len, num_kv_heads, v_head_dim]
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,  # [num_heads]
) -> torch.Tensor:  # [q_len, num_heads, v_head_dim], float32
    """The q_len queries are the last q_len positions: query i sees keys j with
    j <= seq_len - q_len + i and (with a window) j > seq_len - q_len + i - window."""
    q_len, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    k = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [H, seq_len, D]
    v = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    pos = (seq_len - q_len) + torch.arange(q_len, device=q.device)[:, None]
    j = torch.arange(seq_len, device=q.device)[None, :]
    allowed = j <= pos
    if window is not None:
        allowed &= j > pos - window
    scores = torch.matmul(q.float().transpose(0, 1), k.transpose(1, 2)) * scale  # [H, q_len, seq_len]
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        scores = torch.cat([scores, sinks.float().view(-1, 1, 1).expand(-1, q_len, 1)], dim=-1)
    probs = scores.softmax(-1)[..., :seq_len]
    return torch.matmul(probs, v).transpose(0, 1)


def paged_attention_ref(
    query: torch.Tensor,  # [T, num_heads, head_dim]
    kv_cache,  # (key_cache, value_cache), or one stacked (2, num_blocks, ...) tensor
    block_tables: torch.Tensor,  # [B, max_blocks] int
    query_start_loc: list[int],  # [B+1], cumulative query lengths
    seq_lens: list[int],  # [B], context length including the new tokens
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:  # [T, num_heads, v_head_dim], query.dtype
    """Causal attention of each request's new tokens over its paged context.

    The new tokens' K/V must already be in the cache. Tokens past query_start_loc[-1] (padding)
    come back as zeros.
    """
    value_cache = kv_cache[1]
    out = torch.zeros(*query.shape[:2], value_cache.shape[-1], dtype=query.dtype, device=query.device)
    for r, seq_len in enumerate(seq_lens):
        start, end = query_start_loc[r], query_start_loc[r + 1]
        if end == start:
            continue
        k, v = gather_request_kv(kv_cache, block_tables[r], seq_len)
        out[start:end] = causal_attention(query[start:end], k, v, scale, window, softcap, sinks).to(query.dtype)
    return out
