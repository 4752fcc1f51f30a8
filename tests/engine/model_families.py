"""Tiny random-weight models of the architectures users run, built from their config classes.

Each family is small in compute (hidden 64, 2 layers, a 49k vocabulary for the real tokenizer) but
has weights large enough (`initializer_range`) that attention is far from uniform, so a sliding
window or a logit softcap really changes the greedy tokens. `Family.switches` names the config
change that switches each of a family's attention features off; the tests prove the feature matters by
comparing transformers' own output with and without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

_BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1)
_MOE = dict(moe_intermediate_size=32, num_experts_per_tok=2)


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: str  # a transformers config class
    model_cls: str  # its ForCausalLM class
    cfg: dict[str, Any]
    # Per attention feature it uses ("window", "softcap", "sinks"): what switches it off, a config
    # change (dict) or a change to the built model (a function).
    switches: dict[str, dict[str, Any] | Callable[[Any], None]] = field(default_factory=dict)
    windows: tuple[int | None, ...] = (None, None)  # the sliding window of each layer, as the engine must read it

    def config(self, vocab_size: int, **overrides):
        import transformers

        cfg = {**_BASE, **self.cfg, **overrides}
        return getattr(transformers, self.config_cls)(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2,
                                                      pad_token_id=2, tie_word_embeddings=False, **cfg)

    def build(self, vocab_size: int, off: str | None = None):
        """The float32 model with this family's fixed random weights (seed 0); `off` names a feature
        to switch off (a key of `switches`)."""
        import torch
        import transformers

        switch = self.switches[off] if off is not None else {}
        config = self.config(vocab_size, **(switch if isinstance(switch, dict) else {}))
        torch.manual_seed(0)
        model = getattr(transformers, self.model_cls)(config).to(torch.float32).eval()
        model.generation_config.eos_token_id = 2
        model.generation_config.pad_token_id = 2
        if callable(switch):
            switch(model)
        return model


def _no_sinks(model) -> None:
    """Sink logits of -inf add exp(-inf) = 0 to every softmax: attention without sinks."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "sinks", None), torch.nn.Parameter):
                module.sinks.fill_(float("-inf"))


FAMILIES = [
    Family("llama", "LlamaConfig", "LlamaForCausalLM", dict(head_dim=16)),
    Family("mistral", "MistralConfig", "MistralForCausalLM", dict(head_dim=16, sliding_window=None)),
    Family("mistral_window", "MistralConfig", "MistralForCausalLM", dict(head_dim=16, sliding_window=20),
           switches={"window": dict(sliding_window=None)}, windows=(20, 20)),
    # Layer 0 full, layer 1 windowed (max_window_layers=1): mixed layers in one model.
    Family("qwen2_window", "Qwen2Config", "Qwen2ForCausalLM",
           dict(use_sliding_window=True, sliding_window=12, max_window_layers=1),
           switches={"window": dict(use_sliding_window=False)}, windows=(None, 12)),
    Family("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16)),
    Family("qwen2_moe", "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
           dict(num_experts=4, shared_expert_intermediate_size=64, **_MOE)),
    Family("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(head_dim=16, num_experts=4, **_MOE)),
    # MLA: keys 16 + 8 = 24 wide, values 12; layer 0 dense, layer 1 MoE with grouped routing.
    Family("deepseek_v3", "DeepseekV3Config", "DeepseekV3ForCausalLM",
           dict(num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                v_head_dim=12, n_routed_experts=4, n_group=2, topk_group=1, first_k_dense_replace=1,
                n_shared_experts=1, **_MOE)),
    Family("glm4", "Glm4Config", "Glm4ForCausalLM", dict(head_dim=16)),
    Family("glm4_moe", "Glm4MoeConfig", "Glm4MoeForCausalLM",
           dict(head_dim=16, n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1, n_group=1,
                topk_group=1, **_MOE)),
    Family("phi3_window", "Phi3Config", "Phi3ForCausalLM", dict(sliding_window=16),
           switches={"window": dict(sliding_window=None)}, windows=(16, 16)),
    # Alternating windowed/full layers, softcapped scores, a softmax scale from query_pre_attn_scalar.
    Family("gemma2", "Gemma2Config", "Gemma2ForCausalLM",
           dict(head_dim=16, sliding_window=10, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                final_logit_softcapping=None, layer_types=["sliding_attention", "full_attention"]),
           switches={"window": dict(layer_types=["full_attention"] * 2), "softcap": dict(attn_logit_softcapping=None)},
           windows=(10, None)),
    Family("gemma3_text", "Gemma3TextConfig", "Gemma3ForCausalLM",
           dict(head_dim=16, sliding_window=14, query_pre_attn_scalar=20,
                layer_types=["sliding_attention", "full_attention"]),
           switches={"window": dict(layer_types=["full_attention"] * 2)}, windows=(14, None)),
    # Per-head attention sinks (`s_aux`), windowed and full layers, MoE.
    Family("gpt_oss", "GptOssConfig", "GptOssForCausalLM",
           dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=12,
                layer_types=["sliding_attention", "full_attention"],
                rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
           switches={"window": dict(layer_types=["full_attention"] * 2), "sinks": _no_sinks}, windows=(12, None)),
    Family("olmo2", "Olmo2Config", "Olmo2ForCausalLM", {}),
    Family("granite", "GraniteConfig", "GraniteForCausalLM",
           dict(attention_multiplier=0.3, embedding_multiplier=2.0, residual_multiplier=0.5, logits_scaling=2.0)),
]

BY_NAME = {f.name: f for f in FAMILIES}
