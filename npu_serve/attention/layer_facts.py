"""Reading a model's attention layers into `AttentionLayer` facts, once, at engine build.

Where each fact comes from (transformers 5.24; every one of them is then checked against what the
model really does in the dry forward, call_check.py):
- geometry: num_attention_heads, num_key_value_heads, head_dim (or hidden_size // heads); MLA
  configs (qk_nope_head_dim + qk_rope_head_dim keys, v_head_dim values, DeepSeek-V2/V3) expand the
  latent to one K and V per query head, so their KV heads are the query heads;
- the softmax scale: the attention module's own `scaling` (it folds in query_pre_attn_scalar,
  Granite's attention_multiplier, YaRN's mscale); from the config only when no module has one;
- which layers are windowed: `config.layer_types` where the config has it ("sliding_attention"
  layers get `config.sliding_window`: Qwen2/Qwen3 with use_sliding_window from max_window_layers on,
  Qwen2-MoE every other layer below max_window_layers, Gemma 2/3 and gpt-oss alternating); without
  layer_types every layer is windowed when `config.sliding_window` is set (Mistral, Phi-3,
  Qwen3-MoE), as their mask functions do. transformers' masks let a query at position p see keys at
  positions > p - sliding_window (masking_utils.sliding_window_overlay); a window at least as long
  as the model's context is no window;
- the logit softcap: `attn_logit_softcapping` (Gemma 2); sinks: a module's `sinks` (gpt-oss).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from npu_serve.attention.backend import AttentionLayer
from npu_serve.errors import UnsupportedModel

# Layer types (config.layer_types) whose attention is causal softmax attention, windowed or not.
FULL, SLIDING = "full_attention", "sliding_attention"


def text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def model_label(config: Any) -> str:
    model_type = getattr(config, "model_type", None) or type(config).__name__
    path = getattr(config, "name_or_path", "") or ""
    return f"{model_type} model {path!r}" if path else f"{model_type} model"


def max_len_of(config: Any) -> int | None:
    return getattr(text_config(config), "max_position_embeddings", None)


def normalise_window(value: int | None, max_len: int | None) -> int | None:
    """The window as a fact: None when it can never drop a key (unset, or at least the context)."""
    if value is None or (max_len is not None and value >= max_len):
        return None
    return int(value)


def attention_layers(model: torch.nn.Module) -> list[AttentionLayer]:
    """The facts of every attention layer of a loaded model: from its config
    (`attention_layers_from_config`), with the softmax scale and the sinks from the modules."""
    layers = attention_layers_from_config(model.config)
    modules = {m.layer_idx: m for m in model.modules()
               if isinstance(getattr(m, "layer_idx", None), int) and isinstance(getattr(m, "scaling", None), (int, float))}
    out = []
    for layer in layers:
        module = modules.get(layer.layer_idx)
        if module is not None:
            layer = replace(layer, scale=float(module.scaling), has_sinks=getattr(module, "sinks", None) is not None)
        out.append(layer)
    return out


def attention_layers_from_config(config: Any) -> list[AttentionLayer]:
    """One AttentionLayer per decoder layer, from the config alone (no weights needed).

    Refused here: layer types other than full and sliding attention, non-causal (bidirectional)
    attention, and a windowed layer without a usable window size.
    """
    text = text_config(config)
    name = model_label(config)
    if getattr(text, "use_bidirectional_attention", False) or not getattr(text, "is_causal", True):
        raise UnsupportedModel(f"{name}: its attention is bidirectional; npu-serve runs causal language models only")
    try:
        heads, num_layers = getattr(text, "num_attention_heads", None), getattr(text, "num_hidden_layers", None)
        if not isinstance(heads, int) or not isinstance(num_layers, int):
            raise UnsupportedModel(f"{name}: its config names no num_attention_heads / num_hidden_layers; npu-serve "
                                   "runs decoder-only attention models")
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    except UnsupportedModel:
        raise
    except Exception as exc:  # e.g. Gemma 4's per-layer geometry refuses a global head_dim
        raise UnsupportedModel(f"{name}: npu-serve reads one attention geometry for every layer, and this config "
                               f"has none ({type(exc).__name__}: {exc})") from None
    v_head_dim = head_dim
    if getattr(text, "qk_nope_head_dim", None) and getattr(text, "v_head_dim", None):
        # MLA as transformers runs it: the latent is expanded to per-head K (nope + rope) and V.
        head_dim = text.qk_nope_head_dim + text.qk_rope_head_dim
        v_head_dim = text.v_head_dim
        kv_heads = heads
    scale = float(getattr(text, "query_pre_attn_scalar", None) or head_dim) ** -0.5
    softcap = getattr(text, "attn_logit_softcapping", None) or None
    max_len = max_len_of(text)
    window = getattr(text, "sliding_window", None)
    layer_types = getattr(text, "layer_types", None)
    layers = []
    for i in range(num_layers):
        kind = layer_types[i] if layer_types is not None else (SLIDING if window is not None else FULL)
        if kind not in (FULL, SLIDING):
            raise UnsupportedModel(f"{name}: layer {i} is of type {kind!r}; npu-serve runs full and "
                                   "sliding-window attention layers only")
        if kind == SLIDING and (not isinstance(window, int) or window < 1):
            raise UnsupportedModel(f"{name}: layer {i} is a sliding-window layer, but the config's sliding_window "
                                   f"is {window!r}")
        layers.append(AttentionLayer(
            layer_idx=i, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, v_head_dim=v_head_dim,
            scale=scale, sliding_window=normalise_window(window, max_len) if kind == SLIDING else None,
            logit_softcap=softcap,
        ))
    return layers
