"""How a model is split over N tensor-parallel ranks, and which models we split at all.

transformers does the splitting: `from_pretrained(..., distributed_config=DistributedConfig(tp_size=N,
tp_plan="auto"))` builds a 1-D device mesh over the whole world and applies the model's own plan
(q/k/v and gate/up column-wise, o and down row-wise with an all-reduce, lm_head column-wise with an
all-gather, the embedding vocab-parallel). Each rank's attention modules then compute only their
heads, so our attention function sees the rank's heads and the KV cache holds the rank's KV heads.
Measured in transformers 5.24 on CPU with Gloo: with plain SDPA the plans of llama, qwen2, qwen3,
mistral, gemma, granite, glm4, cohere, starcoder2, phi, mixtral, qwen2_moe, qwen3_moe and deepseek_v3
give one device's logits at TP=2; through npu-serve (scripts/tp_compat.py: tokens and logprobs of
TP=2 against TP=1) so do llama, qwen2, qwen3, mistral, gemma, granite, glm4, cohere, starcoder2,
mixtral, qwen2_moe and qwen3_moe: SUPPORTED_MODEL_TYPES. phi3 and olmo2 gather q/k/v on every rank
(no head sharding: a whole KV cache per rank), deepseek_v3's MLA has no q/k/v projections to split
by head, and falcon and gpt2 have no plan: all refused.

What we add ourselves:
- KV-head replication: with more ranks than KV heads (Qwen2.5-72B's 8 KV heads on 16 devices)
  transformers' column split would cut a head in half. We load k_proj/v_proj whole on every rank
  (the "replicate" style) and keep, on rank r, the rows of KV head r // (N / kv_heads): the KV head
  that rank r's query heads read (`ShardPlan.finish`).
- The refusal, from config.json alone, before any process starts (`ShardPlan.for_config`): a model
  type outside SUPPORTED_MODEL_TYPES, query heads not divisible by N, or KV heads that neither divide
  nor are divided by N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from npu_serve.errors import UnsupportedModel

# Model types whose transformers plan shards the attention heads and whose TP=2 output through our engine
# equals TP=1, tokens and logprobs (scripts/tp_compat.py, transformers 5.24); tests/distributed runs
# llama and qwen2 in CI. Sliding-window and other attention features are the attention backend's to
# accept or refuse, as on one device.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma", "granite", "glm4", "cohere",
                                   "starcoder2", "mixtral", "qwen2_moe", "qwen3_moe"})

_ATTENTION_STYLES = {"self_attn.q_proj": "colwise", "self_attn.k_proj": "colwise", "self_attn.v_proj": "colwise",
                     "self_attn.o_proj": "rowwise"}


@dataclass(frozen=True)
class ShardPlan:
    """One model's split over `tp_size` ranks; head counts are per rank."""

    model_type: str
    tp_size: int
    num_heads: int  # query heads on each rank
    num_kv_heads: int  # KV heads on each rank
    total_kv_heads: int
    head_dim: int
    base_prefix: str = "model"  # where the decoder layers sit in the CausalLM ("model.layers.*")

    @property
    def kv_replicas(self) -> int:
        """How many ranks hold the same KV head (1 unless there are more ranks than KV heads)."""
        return max(1, self.tp_size // self.total_kv_heads)

    @classmethod
    def for_config(cls, config: Any, tp_size: int) -> ShardPlan:
        """The plan for a transformers config, or UnsupportedModel saying what does not fit."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        model_type = getattr(text, "model_type", "?")
        heads = text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        if tp_size == 1:
            return cls(model_type, 1, heads, kv_heads, kv_heads, head_dim)
        base_prefix = _base_prefix(config)
        where = f"tensor_parallel_size={tp_size} for model type {model_type!r}"
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModel(f"{where}: tensor parallelism is verified for model types "
                                   f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))} only (scripts/tp_compat.py checks "
                                   "another against one device); serve it with tensor_parallel_size=1")
        plan = dict(getattr(type(text), "base_model_tp_plan", None) or {})
        if not plan:
            raise UnsupportedModel(f"{where}: transformers has no tensor-parallel plan for it")
        wrong = {k: plan.get(f"layers.*.{k}") for k, v in _ATTENTION_STYLES.items() if plan.get(f"layers.*.{k}") != v}
        if wrong:
            raise UnsupportedModel(f"{where}: transformers' plan does not shard the attention heads ({wrong})")
        if heads % tp_size:
            raise UnsupportedModel(f"{where}: its {heads} query heads do not split evenly over {tp_size} ranks")
        if kv_heads % tp_size and tp_size % kv_heads:
            raise UnsupportedModel(f"{where}: its {kv_heads} KV heads neither split evenly over {tp_size} ranks "
                                   "nor divide them (for replication)")
        return cls(model_type, tp_size, heads // tp_size, max(1, kv_heads // tp_size), kv_heads, head_dim, base_prefix)

    def kv_head_of(self, rank: int) -> int:
        """The first (global) KV head rank `rank` holds."""
        return rank // self.kv_replicas if self.kv_replicas > 1 else rank * self.num_kv_heads

    def distributed_config(self):
        """transformers' DistributedConfig for this plan (k/v loaded whole when they are replicated)."""
        from transformers.distributed import DistributedConfig

        overrides: dict[str, str] | str = "auto"
        if self.kv_replicas > 1:
            overrides = {f"{self.base_prefix}.layers.*.self_attn.{p}": "replicate" for p in ("k_proj", "v_proj")}
        return DistributedConfig(tp_size=self.tp_size, tp_plan=overrides)

    def finish(self, model, rank: int) -> None:
        """After loading on rank `rank`: keep its KV head's rows of replicated k/v projections, then
        check every attention layer holds exactly this rank's share."""
        import torch

        for name, module in model.named_modules():
            for proj in ("k_proj", "v_proj"):
                linear = getattr(module, proj, None) if name.endswith("self_attn") else None
                if linear is None:
                    continue
                if self.kv_replicas > 1:
                    rows = slice(self.kv_head_of(rank) * self.head_dim, (self.kv_head_of(rank) + 1) * self.head_dim)
                    linear.weight = torch.nn.Parameter(_local(linear.weight)[rows].clone(), requires_grad=False)
                    if linear.bias is not None:
                        linear.bias = torch.nn.Parameter(_local(linear.bias)[rows].clone(), requires_grad=False)
                    linear.out_features = self.head_dim
                width = _local(linear.weight).shape[0]
                if width != self.num_kv_heads * self.head_dim:
                    raise UnsupportedModel(f"{name}.{proj} holds {width} output features on rank {rank}, expected "
                                           f"{self.num_kv_heads} KV heads x {self.head_dim}")


def _base_prefix(config) -> str:
    """The CausalLM's base_model_prefix, which the full names of its plan rules start with."""
    import transformers

    for arch in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls.base_model_prefix
    return "model"


def _local(t):
    """The rank's own shard of a (possibly DTensor) parameter."""
    return t.to_local() if hasattr(t, "to_local") else t
