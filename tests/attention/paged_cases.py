"""Random paged-attention batches shaped like the model runner's: decodes first, then prefills or
chunks of prefills with context already in the cache."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch

from npu_serve.attention.backend import AttentionLayer, AttentionMetadata

DEVICE = os.environ.get("NPU_SERVE_TEST_DEVICE", "cpu")
# Written into the null block: a kernel that reads padding unmasked shows it at once.
NULL_BLOCK_FILL = 100.0


@dataclass
class PagedCase:
    query: torch.Tensor  # [T, H, D]
    key: torch.Tensor  # [T, Hkv, D]
    value: torch.Tensor
    kv_cache: torch.Tensor  # [2, num_blocks, block_size, Hkv, D]; context filled, new slots not yet
    meta: AttentionMetadata
    scale: float

    @property
    def layer(self) -> AttentionLayer:
        """The facts of the (plain, causal) layer this case attends as."""
        return AttentionLayer(layer_idx=0, num_heads=self.query.shape[1], num_kv_heads=self.key.shape[1],
                              head_dim=self.query.shape[2], v_head_dim=self.value.shape[2], scale=self.scale)


def make_case(
    q_lens: list[int], seq_lens: list[int], num_decodes: int, num_heads: int, num_kv_heads: int,
    head_dim: int, block_size: int, dtype: torch.dtype, seed: int = 0, device: str = DEVICE,
) -> PagedCase:
    """Requests get shuffled blocks (never block 0); block tables are padded with 0 to the longest."""
    if any(q > s for q, s in zip(q_lens, seq_lens)) or any(q != 1 for q in q_lens[:num_decodes]):
        raise ValueError("bad case")
    gen = torch.Generator().manual_seed(seed)
    need = [-(-s // block_size) for s in seq_lens]
    num_blocks = 1 + sum(need) + 2
    order = list(range(1, num_blocks))
    random.Random(seed).shuffle(order)
    max_blocks = max(need) + 1
    tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    slots: list[int] = []
    used = 0
    for r, (q, s) in enumerate(zip(q_lens, seq_lens)):
        tables[r, : need[r]] = torch.tensor(order[used : used + need[r]])
        used += need[r]
        slots += [int(tables[r, p // block_size]) * block_size + p % block_size for p in range(s - q, s)]

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    kv_cache = rand(2, num_blocks, block_size, num_kv_heads, head_dim)
    kv_cache[:, 0] = NULL_BLOCK_FILL
    total = sum(q_lens)
    qsl = [0]
    for q in q_lens:
        qsl.append(qsl[-1] + q)
    meta = AttentionMetadata(
        num_tokens=total, num_decodes=num_decodes,
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=tables.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc_cpu=qsl, seq_lens_cpu=list(seq_lens), block_size=block_size,
    )
    return PagedCase(
        query=rand(total, num_heads, head_dim).to(device), key=rand(total, num_kv_heads, head_dim).to(device),
        value=rand(total, num_kv_heads, head_dim).to(device), kv_cache=kv_cache.to(device), meta=meta,
        scale=head_dim**-0.5,
    )


def random_case(seed: int, block_size: int, head_dim: int, dtype: torch.dtype, max_len: int) -> PagedCase:
    """A few decodes, then a chunk with cached context and a fresh prefill, random lengths and GQA."""
    rng = random.Random(seed)
    num_kv_heads = rng.choice([1, 2])
    num_heads = num_kv_heads * rng.choice([1, 2, 4])
    num_decodes = rng.randint(1, 3)
    q_lens = [1] * num_decodes
    seq_lens = [rng.randint(1, max_len) for _ in range(num_decodes)]
    chunk = rng.randint(2, 24)
    q_lens += [chunk, rng.randint(1, 24)]
    seq_lens += [chunk + rng.randint(1, max_len), q_lens[-1]]
    return make_case(q_lens, seq_lens, num_decodes, num_heads, num_kv_heads, head_dim, block_size, dtype, seed)


def tolerance(dtype: torch.dtype) -> dict:
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
