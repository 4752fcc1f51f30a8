"""The contract between the model runner and an attention backend.

One forward step packs every scheduled request's new tokens back to back into T tokens. Requests
are ordered decodes first (query length 1), then prefills/chunks, so the first `num_decodes`
requests (and tokens) form a pure-decode slice that backends can batch.

KV cache, per layer: a pair `(key_cache, value_cache)`, `[num_blocks, block_size, num_kv_heads,
head_dim]` and `[num_blocks, block_size, num_kv_heads, v_head_dim]`, each contiguous. (Where the two
head sizes agree the pair may be the two halves of one stacked `(2, num_blocks, ...)` tensor, so
backends unpack it, `key_cache, value_cache = kv_cache`, and never look at it whole.) Block 0 is the
null block: padding entries in `block_tables` point at it and nothing is ever read from it unmasked.

Per-layer facts: what a layer asks of attention (head sizes, scale, sliding window, logit softcap,
sinks) is read once, when the engine is built, into one `AttentionLayer` per layer
(`hf_bridge.attention_layers`). A backend says up front which layers it cannot compute exactly
(`unsupported`), so an unsupported model is refused before it serves, never answered wrongly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionLayer:
    """What one attention layer asks of a backend. Built once per layer at engine build (never per
    token) from the model's config and `layer_types`, and checked against what transformers really
    passes during a dry forward (hf_bridge)."""

    layer_idx: int
    num_heads: int  # query heads (on this rank, under tensor parallelism)
    num_kv_heads: int  # KV heads (on this rank)
    head_dim: int  # query/key head size
    v_head_dim: int  # value head size (== head_dim except MLA, e.g. DeepSeek-V3)
    scale: float  # softmax scale
    # A query at position p sees keys at positions > p - sliding_window (itself included): the
    # `sliding_window` transformers passes and its masks use. None = the whole causal context.
    sliding_window: int | None = None
    # scores -> softcap * tanh(scores / softcap) before softmax (Gemma 2's attn_logit_softcapping).
    logit_softcap: float | None = None
    has_sinks: bool = False  # per-head sink logits (gpt-oss's `s_aux`)

    def features(self) -> list[str]:
        """The optional features this layer uses, as short names for refusal messages."""
        found = []
        if self.sliding_window is not None:
            found.append(f"sliding-window attention (window {self.sliding_window})")
        if self.logit_softcap is not None:
            found.append(f"attention logit softcapping ({self.logit_softcap})")
        if self.has_sinks:
            found.append("attention sinks")
        if self.v_head_dim != self.head_dim:
            found.append(f"different key and value head sizes ({self.head_dim} and {self.v_head_dim})")
        return found


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
        and the model's dtype. Backends whose ops limit either (Ascend's) keep them to check layers
        against; the default needs neither."""

    def unsupported(self, layer: AttentionLayer) -> str | None:
        """None when this backend computes `layer` exactly; else one sentence naming what it cannot do.

        Called for every layer at engine build; a reason refuses the model before it serves. This
        default refuses every optional feature; backends override it as they implement them.
        """
        features = layer.features()
        if features:
            return f"the {self.name} attention backend does not implement {', '.join(features)}"
        return None

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads, head_dim]
        key: torch.Tensor,  # [T, num_kv_heads, head_dim]
        value: torch.Tensor,  # [T, num_kv_heads, v_head_dim]
        kv_cache,  # (key_cache, value_cache), see the module docstring
        meta: AttentionMetadata,
        layer: AttentionLayer,
    ) -> torch.Tensor:  # [T, num_heads, v_head_dim]
        """Causal attention of each request's new tokens over its whole context (cached + new)."""
