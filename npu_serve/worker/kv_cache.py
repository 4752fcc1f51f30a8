"""KV tensors: per layer a `(key_cache, value_cache)` pair of separately allocated tensors, and sizing.

key_cache is `[num_blocks, block_size, num_kv_heads, head_dim]`, value_cache `[num_blocks, block_size,
num_kv_heads, v_head_dim]`: the two head sizes differ for MLA as transformers runs it (DeepSeek-V3's
keys are qk_nope + qk_rope wide, its values v_head_dim), and may differ from layer to layer. The
shapes come from the layers' facts (hf_bridge.attention_layers), the same ones the backends check,
so the cache, its sizing and the block accounting use the real bytes per token.

Under tensor parallelism num_kv_heads is the rank's share (distributed/sharding.py).

Zero-initialised on purpose: padded block-table entries point at the null block 0, and masked-out
positions still pass through softmax(-inf) * V, where a NaN left in memory would poison the sum.
On CPU each tensor is advised onto 2 MiB pages before it is zeroed (runtime_env.advise_huge_pages).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from npu_serve.attention.backend import AttentionLayer
from npu_serve.runtime_env import advise_huge_pages


@dataclass(frozen=True)
class LayerKVShape:
    """What one layer stores per token: num_kv_heads keys of head_dim and values of v_head_dim."""

    num_kv_heads: int
    head_dim: int
    v_head_dim: int

    @property
    def elements_per_token(self) -> int:
        return self.num_kv_heads * (self.head_dim + self.v_head_dim)


@dataclass(frozen=True)
class KVCacheSpec:
    layers: tuple[LayerKVShape, ...]  # indexed by layer_idx
    dtype: torch.dtype
    block_size: int

    @classmethod
    def from_layers(cls, layers: list[AttentionLayer], dtype: torch.dtype, block_size: int) -> KVCacheSpec:
        if [layer.layer_idx for layer in layers] != list(range(len(layers))):
            raise ValueError("attention layers must be numbered 0..n-1, in order")
        shapes = tuple(LayerKVShape(layer.num_kv_heads, layer.head_dim, layer.v_head_dim) for layer in layers)
        return cls(shapes, dtype, block_size)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def bytes_per_token(self) -> int:
        """KV bytes one token occupies, summed over every layer."""
        elem = torch.empty((), dtype=self.dtype).element_size()
        return sum(shape.elements_per_token for shape in self.layers) * elem

    @property
    def bytes_per_block(self) -> int:
        return self.block_size * self.bytes_per_token

    def num_blocks_for(self, memory_bytes: int) -> int:
        return max(2, memory_bytes // self.bytes_per_block)


def allocate_kv_caches(spec: KVCacheSpec, num_blocks: int,
                       device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One zeroed (key_cache, value_cache) pair per layer, each tensor contiguous on its own."""
    caches = []
    for shape in spec.layers:
        head = (num_blocks, spec.block_size, shape.num_kv_heads)
        caches.append((_zeros((*head, shape.head_dim), spec.dtype, device),
                       _zeros((*head, shape.v_head_dim), spec.dtype, device)))
    return caches


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    if t.device.type == "cpu":  # before the first write, which faults the pages in
        advise_huge_pages(t.data_ptr(), t.numel() * t.element_size())
    return t.zero_()
