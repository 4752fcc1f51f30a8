"""KV tensors: one `(2, num_blocks, block_size, num_kv_heads, head_dim)` tensor per layer, and sizing.

Under tensor parallelism num_kv_heads is the rank's share (distributed/sharding.py).

Zero-initialised on purpose: padded block-table entries point at the null block 0, and masked-out
positions still pass through softmax(-inf) * V, where a NaN left in memory would poison the sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from npu_serve.distributed.sharding import ShardPlan


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    block_size: int

    @classmethod
    def from_hf_config(cls, config, dtype: torch.dtype, block_size: int, shard: ShardPlan | None = None) -> "KVCacheSpec":
        """One rank's cache: all KV heads, or the rank's share under the tensor-parallel `shard`."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        if shard is not None:
            kv_heads, head_dim = shard.num_kv_heads, shard.head_dim
        return cls(text.num_hidden_layers, kv_heads, head_dim, dtype, block_size)

    @property
    def bytes_per_block(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem

    def num_blocks_for(self, memory_bytes: int) -> int:
        return max(2, memory_bytes // self.bytes_per_block)


def allocate_kv_caches(spec: KVCacheSpec, num_blocks: int, device: torch.device) -> list[torch.Tensor]:
    shape = (2, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
    return [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]
