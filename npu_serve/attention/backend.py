"""The contract between the model runner and an attention backend.

One forward step packs every scheduled request's new tokens back to back into T tokens. Requests
are ordered decodes first (query length 1), then prefills/chunks, so the first `num_decodes`
requests (and tokens) form a pure-decode slice that backends can batch.

KV cache, per layer: one tensor `(2, num_blocks, block_size, num_kv_heads, head_dim)`; [0] holds
keys, [1] values. Block 0 is the null block: padding entries in `block_tables` point at it and
nothing is ever read from it unmasked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionLayer:
    """What one attention layer asks of a backend, read once at engine build from the model's config
    (never per token). See /work/wt/ATTENTION_CONTRACT.md (issue 9 lands the full version)."""

    layer_idx: int
    num_heads: int  # query heads (on this rank)
    num_kv_heads: int  # KV heads (on this rank)
    head_dim: int  # query/key head size
    v_head_dim: int  # value head size (== head_dim except MLA)
    scale: float  # softmax scale
    sliding_window: int | None = None  # a query at position p sees keys at positions > p - sliding_window
    logit_softcap: float | None = None  # scores -> softcap * tanh(scores / softcap) before softmax
    has_sinks: bool = False  # per-head sink logits (gpt-oss's `s_aux`)


@dataclass
class AttentionMetadata:
    num_tokens: int  # T
    num_decodes: int  # the first num_decodes requests have query length 1
    query_start_loc: torch.Tensor  # int32 [B+1], cumulative query lengths on the device
    seq_lens: torch.Tensor  # int32 [B], context length after this step (cached + new)
    block_tables: torch.Tensor  # int32 [B, max_blocks], padded with 0 (the null block)
    slot_mapping: torch.Tensor  # int64 [T], cache slot (block * block_size + offset) of each new token
    # Host copies: several device ops want Python lists (torch_npu's actual_seq_lengths, ...).
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]
    block_size: int

    @property
    def num_reqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def query_lens_cpu(self) -> list[int]:
        q = self.query_start_loc_cpu
        return [q[i + 1] - q[i] for i in range(len(q) - 1)]

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_lens_cpu, default=0)


class AttentionBackend(ABC):
    """Writes the new K/V into the paged cache, then attends each query over its request's blocks."""

    name: str = "abstract"

    def configure(self, block_size: int, dtype: torch.dtype) -> None:
        """Told once at engine build, before `unsupported` is asked about any layer: the KV block size
        and the model's dtype. Backends whose ops limit either keep them to check layers against."""

    def unsupported(self, layer: AttentionLayer) -> str | None:
        """None when this backend computes `layer` exactly; else one sentence naming what it cannot do.
        Called for every layer at engine build. The default refuses every optional feature."""
        features = []
        if layer.sliding_window is not None:
            features.append(f"sliding-window attention (window {layer.sliding_window})")
        if layer.logit_softcap is not None:
            features.append(f"attention logit softcapping ({layer.logit_softcap})")
        if layer.has_sinks:
            features.append("attention sinks")
        if layer.v_head_dim != layer.head_dim:
            features.append(f"different key and value head sizes ({layer.head_dim} and {layer.v_head_dim})")
        return f"the {self.name} attention backend does not implement {', '.join(features)}" if features else None

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads, head_dim]
        key: torch.Tensor,  # [T, num_kv_heads, head_dim]
        value: torch.Tensor,  # [T, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [T, num_heads, head_dim]
        """Causal attention of each request's new tokens over its whole context (cached + new)."""
