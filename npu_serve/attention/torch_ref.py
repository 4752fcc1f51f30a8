"""The torch reference backend: plain tensor ops, the CPU path and the oracle for every kernel.

Writes new K/V with `index_copy_` into the flat slot view of the cache, then
- decodes (the first `num_decodes` requests, one query each) in one batched SDPA over their gathered
  blocks, padded to the longest context and masked by length;
- each prefill/chunk with its own SDPA, causal with the offset of the tokens already cached: query i
  of a chunk that starts at position s attends to keys 0..s+i.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from npu_serve.attention.backend import AttentionBackend, AttentionLayer, AttentionMetadata


def write_kv(kv_cache, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write each new token's K and V into its slot of the (key_cache, value_cache) pair."""
    for cache, new in zip(kv_cache, (key, value)):
        cache.view(-1, *cache.shape[2:]).index_copy_(0, slot_mapping, new)


def gather_context(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """[length, H, D] of one request's cached keys (or values), in token order."""
    block_size = cache.shape[1]
    num = -(-length // block_size)
    return cache[block_table[:num].long()].flatten(0, 1)[:length]


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def __init__(self) -> None:
        self._groups_for: AttentionMetadata | None = None
        self._groups: list = []

    def forward(self, query, key, value, kv_cache, meta: AttentionMetadata, layer: AttentionLayer) -> torch.Tensor:
        scale = layer.scale
        write_kv(kv_cache, key, value, meta.slot_mapping)
        out = torch.empty_like(query)
        if meta.num_decodes:
            self._forward_decodes(query, kv_cache, meta, scale, out)
        qsl, seq_lens = meta.query_start_loc_cpu, meta.seq_lens_cpu
        for i in range(meta.num_decodes, meta.num_reqs):
            a, b = qsl[i], qsl[i + 1]
            out[a:b] = self._prefill(query[a:b], kv_cache, meta.block_tables[i], seq_lens[i], scale)
        return out

    def _forward_decodes(self, query, kv_cache, meta: AttentionMetadata, scale: float, out: torch.Tensor) -> None:
        """Attention of the first num_decodes tokens (one query each) into out[:num_decodes]."""
        nd = meta.num_decodes
        for idx, max_len in self._decode_groups(meta, kv_cache.shape[2], query.device):
            if idx is None:
                out[:nd] = self._decode(query[:nd], kv_cache, meta.block_tables[:nd], meta.seq_lens[:nd],
                                        max_len, scale)
            else:
                out[idx] = self._decode(query[idx], kv_cache, meta.block_tables[idx], meta.seq_lens[idx],
                                        max_len, scale)

    def _decode_groups(self, meta: AttentionMetadata, block_size: int, device) -> list:
        """Length buckets of this step's decodes, computed once per step and reused by every layer."""
        if self._groups_for is not meta:
            lens = meta.seq_lens_cpu[: meta.num_decodes]
            groups = _length_buckets(lens, block_size)
            if len(groups) == 1:
                self._groups = [(None, max(lens))]
            else:
                self._groups = [(torch.tensor(g, device=device), lens[g[-1]]) for g in groups]
            self._groups_for = meta
        return self._groups

    @staticmethod
    def _decode(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor, lens: torch.Tensor,
                max_len: int, scale: float) -> torch.Tensor:
        nd, num_heads, head_dim = q.shape
        num_kv_heads = kv_cache.shape[3]
        block_size = kv_cache.shape[2]
        tables = block_tables[:, : -(-max_len // block_size)].long()
        # [nd, blocks, block_size, Hkv, D] -> [nd, Hkv, L, D]
        k = kv_cache[0][tables].flatten(1, 2).transpose(1, 2)
        v = kv_cache[1][tables].flatten(1, 2).transpose(1, 2)
        positions = torch.arange(k.shape[2], device=q.device)
        mask = (positions[None, :] < lens[:, None]).view(nd, 1, 1, -1)
        # GQA without expanding K/V: the G query heads that share a KV head become G "query
        # positions" of one head, all allowed the same keys. Measured ~3x faster than enable_gqa on
        # CPU in bf16 (batch 32, context 560, SmolLM2 heads).
        groups = num_heads // num_kv_heads
        qg = q.view(nd, num_kv_heads, groups, head_dim)
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
        return out.reshape(nd, num_heads, head_dim)

    @staticmethod
    def _prefill(q: torch.Tensor, kv_cache: torch.Tensor, table: torch.Tensor, seq_len: int, scale: float) -> torch.Tensor:
        n = q.shape[0]
        k = gather_context(kv_cache[0], table, seq_len).transpose(0, 1).unsqueeze(0)
        v = gather_context(kv_cache[1], table, seq_len).transpose(0, 1).unsqueeze(0)
        qh = q.transpose(0, 1).unsqueeze(0)
        gqa = qh.shape[1] != k.shape[1]
        if n == seq_len:
            out = F.scaled_dot_product_attention(qh, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        else:
            start = seq_len - n
            rows = torch.arange(n, device=q.device)[:, None] + start
            mask = torch.arange(seq_len, device=q.device)[None, :] <= rows
            out = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
        return out[0].transpose(0, 1)


def _length_buckets(lens: list[int], block_size: int, slack: float = 1.3) -> list[list[int]]:
    """Group decode requests of similar context length (indices sorted by length), so each group's
    gather and SDPA pad to its own longest context instead of the batch's. A group closes when the
    next length exceeds slack x its shortest (plus a block). Measured on 64 decodes with contexts
    32-640 (SmolLM2 heads, bf16, 1 thread): 13.3 ms -> 6.3 ms per layer."""
    order = sorted(range(len(lens)), key=lens.__getitem__)
    groups: list[list[int]] = []
    for i in order:
        if groups and lens[i] <= slack * lens[groups[-1][0]] + block_size:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
