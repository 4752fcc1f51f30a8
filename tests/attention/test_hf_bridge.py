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
    from transformers import Qwen2Config, Qwen2ForCausalLM

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
