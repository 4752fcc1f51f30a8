"""The attention bridge never drops what transformers hands it: per-layer facts are read from the
config, backends refuse what they cannot compute, and the dry forward at engine build refuses any
attention keyword (or tensor shape) that disagrees with the facts."""

from __future__ import annotations

import pytest
import torch

from npu_serve.attention import hf_bridge
from npu_serve.attention.backend import AttentionBackend, AttentionLayer
from npu_serve.errors import UnsupportedModel


class PlainOnly(AttentionBackend):
    """A backend with the contract's default refusals (plain causal attention only)."""

    name = "plain"

    def forward(self, query, key, value, kv_cache, meta, layer):
        raise AssertionError("never called: install refuses first")


def _tiny(config_cls, model_cls, **cfg):
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)
    base.update(cfg)
    torch.manual_seed(0)
    return model_cls(config_cls(**base)).eval()


def test_plain_llama_facts():
    from transformers import LlamaConfig, LlamaForCausalLM

    layers = hf_bridge.attention_layers(_tiny(LlamaConfig, LlamaForCausalLM, head_dim=16))
    assert layers == [AttentionLayer(layer_idx=i, num_heads=4, num_kv_heads=2, head_dim=16, v_head_dim=16,
                                     scale=0.25) for i in range(2)]


def test_window_facts_per_layer_and_no_window_when_it_covers_the_context():
    from transformers import Qwen2Config

    layers = hf_bridge.attention_layers_from_config(
        Qwen2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=256, use_sliding_window=True, sliding_window=32, max_window_layers=2))
    assert [layer.sliding_window for layer in layers] == [None, None, 32, 32]
    wide = hf_bridge.attention_layers_from_config(
        Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=256, use_sliding_window=True, sliding_window=256, max_window_layers=0))
    assert [layer.sliding_window for layer in wide] == [None, None]


def test_mla_facts_have_separate_key_and_value_head_sizes():
    from transformers import DeepseekV3Config

    cfg = DeepseekV3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                           qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, kv_lora_rank=32, q_lora_rank=None)
    layer = hf_bridge.attention_layers_from_config(cfg)[0]
    assert (layer.num_heads, layer.num_kv_heads, layer.head_dim, layer.v_head_dim) == (4, 4, 24, 12)
    assert "different key and value head sizes (24 and 12)" in PlainOnly().unsupported(layer)


def test_unknown_layer_type_is_refused():
    from transformers import Qwen2Config

    cfg = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      layer_types=["full_attention", "full_attention"])
    cfg.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(UnsupportedModel, match="layer 1 is of type 'linear_attention'"):
        hf_bridge.attention_layers_from_config(cfg)


def test_backend_refusal_names_model_layer_and_feature():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    model = _tiny(Gemma2Config, Gemma2ForCausalLM, head_dim=16, sliding_window=8, attn_logit_softcapping=50.0)
    with pytest.raises(UnsupportedModel) as info:
        hf_bridge.install(model, PlainOnly())
    assert "gemma2 model" in str(info.value) and "layer 0" in str(info.value)
    assert "attention logit softcapping (50.0)" in str(info.value)


def test_invented_attention_kwarg_is_refused_at_engine_build(tiny_llama_dir, monkeypatch):
    """A keyword transformers might add tomorrow, with a value that could change the result, stops the
    engine from being built; it is never silently dropped."""
    from transformers.models.llama import modeling_llama

    from npu_serve import LLM

    real = modeling_llama.ALL_ATTENTION_FUNCTIONS.get_interface

    def with_feature(name, default):
        fn = real(name, default)

        def call(*args, **kwargs):
            return fn(*args, attention_temperature_boost=1.5, **kwargs)

        return call

    monkeypatch.setattr(modeling_llama.ALL_ATTENTION_FUNCTIONS, "get_interface", with_feature)
    with pytest.raises(UnsupportedModel, match=r"layer 0: transformers passes attention keyword "
                                               r"attention_temperature_boost=1.5, which npu-serve's paged attention "
                                               r"does not implement"):
        LLM(str(tiny_llama_dir), device="cpu", dtype="float32", num_kv_blocks=8)


def test_unset_unknown_kwarg_and_harmless_ones_pass(tiny_llama_dir, monkeypatch):
    from transformers.models.llama import modeling_llama

    from npu_serve import LLM, SamplingParams

    real = modeling_llama.ALL_ATTENTION_FUNCTIONS.get_interface

    def with_unset(name, default):
        fn = real(name, default)
        return lambda *a, **kw: fn(*a, some_future_option=None, **kw)

    monkeypatch.setattr(modeling_llama.ALL_ATTENTION_FUNCTIONS, "get_interface", with_unset)
    llm = LLM(str(tiny_llama_dir), device="cpu", dtype="float32", num_kv_blocks=8)
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 2


def test_facts_that_disagree_with_the_call_are_refused(tiny_llama_dir, monkeypatch):
    """If the config reading gets a layer wrong, the dry forward says so instead of serving it."""
    from npu_serve import LLM

    real = hf_bridge.attention_layers

    def wrong_scale(model):
        return [AttentionLayer(**{**layer.__dict__, "scale": layer.scale * 2}) for layer in real(model)]

    monkeypatch.setattr(hf_bridge, "attention_layers", wrong_scale)
    with pytest.raises(UnsupportedModel, match="transformers passes attention keyword scaling=.*softmax scale"):
        LLM(str(tiny_llama_dir), device="cpu", dtype="float32", num_kv_blocks=8)


def test_dry_run_leaves_the_cache_zeroed(tiny_llama_dir):
    from npu_serve import LLM

    llm = LLM(str(tiny_llama_dir), device="cpu", dtype="float32", num_kv_blocks=8)
    for key_cache, value_cache in llm.engine.executor.kv_caches:
        assert not key_cache.any() and not value_cache.any()


def test_facts_of_each_architecture_from_its_config():
    """Where each architecture keeps its windows: layer_types (Qwen2 from max_window_layers on,
    Qwen2-MoE every other layer below max_window_layers, Gemma), or every layer (Mistral, Phi-3,
    Qwen3-MoE without layer_types)."""
    from transformers import (
        Gemma3TextConfig, MistralConfig, Phi3Config, Qwen2MoeConfig, Qwen3MoeConfig,
    )

    geo = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)

    def windows(config):
        return [layer.sliding_window for layer in hf_bridge.attention_layers_from_config(config)]

    assert windows(MistralConfig(num_hidden_layers=2, sliding_window=32, **geo)) == [32, 32]
    assert windows(MistralConfig(num_hidden_layers=2, sliding_window=None, **geo)) == [None, None]
    assert windows(Phi3Config(num_hidden_layers=2, sliding_window=31, **geo)) == [31, 31]
    assert windows(Qwen3MoeConfig(num_hidden_layers=2, use_sliding_window=True, sliding_window=16, **geo)) == [16, 16]
    assert windows(Qwen3MoeConfig(num_hidden_layers=2, sliding_window=16, **geo)) == [None, None]
    assert windows(Qwen2MoeConfig(num_hidden_layers=4, use_sliding_window=True, sliding_window=16, max_window_layers=3,
                                  **geo)) == [16, None, 16, None]
    assert windows(Qwen2MoeConfig(num_hidden_layers=2, **geo)) == [None, None]  # sliding_window is 0 there
    gemma3 = Gemma3TextConfig(num_hidden_layers=6, sliding_window=8, head_dim=16, query_pre_attn_scalar=32, **geo)
    assert windows(gemma3) == [8, 8, 8, 8, 8, None]


def test_bidirectional_attention_is_refused():
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, use_bidirectional_attention=True)
    with pytest.raises(UnsupportedModel, match="bidirectional"):
        hf_bridge.attention_layers_from_config(cfg)


def test_mask_pattern_reads_causal_and_windowed_masks_and_refuses_others():
    from transformers.masking_utils import and_masks, causal_mask_function, or_masks, sliding_window_causal_mask_function

    from npu_serve.attention.call_check import mask_pattern

    assert mask_pattern(causal_mask_function, 4096) is None
    assert mask_pattern(sliding_window_causal_mask_function(7), 4096) == 7
    assert mask_pattern(sliding_window_causal_mask_function(1), 64) == 1
    prefix_lm = or_masks(causal_mask_function, lambda b, h, q, kv: kv < 4)  # bidirectional over a prefix
    with pytest.raises(ValueError, match="not causal"):
        mask_pattern(prefix_lm, 64)
    with pytest.raises(ValueError, match="later key"):
        mask_pattern(or_masks(causal_mask_function, lambda b, h, q, kv: kv == q + 1), 64)
    chunked = and_masks(causal_mask_function, lambda b, h, q, kv: kv // 8 == q // 8)  # Llama 4's chunks
    with pytest.raises(ValueError):
        mask_pattern(chunked, 64)
    with pytest.raises(ValueError, match="contiguous"):
        mask_pattern(and_masks(causal_mask_function, lambda b, h, q, kv: kv % 2 == 0), 64)


def test_a_mask_the_model_adds_is_refused_at_engine_build(tiny_llama_dir, monkeypatch):
    """A model that widens its causal mask (a prefix-LM overlay, image tokens attending both ways)
    would be answered wrongly by purely causal attention: the dry run sees the mask and refuses."""
    from transformers import masking_utils
    from transformers.models.llama import modeling_llama

    from npu_serve import LLM

    real = masking_utils.create_causal_mask

    def with_overlay(*args, **kwargs):
        return real(*args, or_mask_function=lambda b, h, q, kv: kv < 2, **kwargs)

    monkeypatch.setattr(modeling_llama, "create_causal_mask", with_overlay)
    with pytest.raises(UnsupportedModel, match="layer 0: the model masks it in a way npu-serve cannot reproduce"):
        LLM(str(tiny_llama_dir), device="cpu", dtype="float32", num_kv_blocks=8)


def test_a_window_read_wrongly_is_caught_by_the_mask_even_without_a_keyword(tmp_path, tokenizer_dir, monkeypatch):
    """Qwen2-MoE windows its layers through the mask alone (no sliding_window= keyword): a fact that
    misses the window is still refused, because the dry run compares it with the mask."""
    from dataclasses import replace

    from tests.conftest import _save_tiny
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    from npu_serve import LLM

    path = _save_tiny(tmp_path, Qwen2MoeConfig, Qwen2MoeForCausalLM, tokenizer_dir, hidden_size=64,
                      intermediate_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                      num_experts=4, num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, use_sliding_window=True, sliding_window=8,
                      max_window_layers=2)
    real = hf_bridge.attention_layers
    monkeypatch.setattr(hf_bridge, "attention_layers",
                        lambda model: [replace(layer, sliding_window=None) for layer in real(model)])
    with pytest.raises(UnsupportedModel, match="layer 0: transformers masks it with a sliding window of 8, but "
                                               "npu-serve read None"):
        LLM(str(path), device="cpu", dtype="float32", num_kv_blocks=8)


def test_a_config_softcap_the_model_never_applies_is_refused(tmp_path, tokenizer_dir):
    """Gemma 3's config may carry attn_logit_softcapping, but its attention never passes it on (so
    transformers computes without it): npu-serve refuses rather than guess which is meant."""
    from tests.conftest import _save_tiny
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from npu_serve import LLM

    path = _save_tiny(tmp_path, Gemma3TextConfig, Gemma3ForCausalLM, tokenizer_dir, hidden_size=64,
                      intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, max_position_embeddings=256, sliding_window=8, attn_logit_softcapping=30.0)
    with pytest.raises(UnsupportedModel, match="layer 0: its config sets an attention logit softcap of 30.0, but "
                                               "transformers' attention for it passes none"):
        LLM(str(path), device="cpu", dtype="float32", num_kv_blocks=8)


def test_a_model_that_edits_its_mask_is_refused_with_the_cause(tiny_llama_dir, monkeypatch):
    """Model code that works on the mask tensor itself cannot run on npu-serve's mask-free attention:
    the dry forward's failure becomes an UnsupportedModel naming the cause, at engine build."""
    from transformers import masking_utils
    from transformers.models.llama import modeling_llama

    from npu_serve import LLM

    real = masking_utils.create_causal_mask

    def edited(*args, **kwargs):
        mask = real(*args, **kwargs)
        return None if mask is None else mask.to(torch.bool)

    monkeypatch.setattr(modeling_llama, "create_causal_mask", edited)
    with pytest.raises(UnsupportedModel, match=r"a one-token forward through npu-serve's attention fails "
                                               r"\(AttributeError: 'MaskSeen'"):
        LLM(str(tiny_llama_dir), device="cpu", dtype="float32", num_kv_blocks=8)


def test_configs_without_one_attention_geometry_are_refused():
    """RWKV has no attention heads at all; Gemma 4 keeps head sizes per layer (and shares KV between
    layers): both are refused by name instead of failing somewhere inside the engine."""
    from transformers import Gemma4TextConfig, RwkvConfig

    with pytest.raises(UnsupportedModel, match="names no num_attention_heads"):
        hf_bridge.attention_layers_from_config(RwkvConfig(num_hidden_layers=2, hidden_size=64))
    with pytest.raises(UnsupportedModel, match="one attention geometry for every layer"):
        hf_bridge.attention_layers_from_config(Gemma4TextConfig(num_hidden_layers=2, hidden_size=64))


def test_keywords_passed_only_without_a_mask_are_checked_too(tiny_llama_dir, monkeypatch):
    """Serving steps hand the model no mask at all; model code may then pass other keywords than in
    the mask-reporting dry forward. The second dry forward (masks absent) sees and refuses them."""
    from transformers.models.llama import modeling_llama

    from npu_serve import LLM

    real = modeling_llama.ALL_ATTENTION_FUNCTIONS.get_interface

    def with_feature_when_unmasked(name, default):
        fn = real(name, default)

        def call(module, query, key, value, attention_mask, **kwargs):
            extra = {"attention_temperature_boost": 1.5} if attention_mask is None else {}
            return fn(module, query, key, value, attention_mask, **extra, **kwargs)

        return call

    monkeypatch.setattr(modeling_llama.ALL_ATTENTION_FUNCTIONS, "get_interface", with_feature_when_unmasked)
    with pytest.raises(UnsupportedModel, match="attention_temperature_boost=1.5"):
        LLM(str(tiny_llama_dir), device="cpu", dtype="float32", num_kv_blocks=8)
