"""The checks that need only the model's config.json, run before any weight is loaded.

Loading a 70B model takes minutes; learning afterwards that the device cannot run its head size wastes
them and hides the reason in a stack trace. So the engine builder reads config.json first, turns it
into per-layer attention facts and asks the backend (`unsupported`) about each, with the block size
and dtype it will run, and refuses with one line naming the layer and the fix.
"""

from __future__ import annotations

from typing import Any

from npu_serve.attention.backend import AttentionBackend, AttentionLayer
from npu_serve.errors import UnsupportedModel


def load_config(path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def check_before_load(config: Any, name: str, backend: AttentionBackend) -> list[AttentionLayer]:
    """The layers' facts; UnsupportedModel (one line) for the first layer the backend cannot compute."""
    layers = layers_from_config(config)
    for layer in layers:
        reason = backend.unsupported(layer)
        if reason is not None:
            raise UnsupportedModel(f"{name}: layer {layer.layer_idx} cannot run on the {backend.name} "
                                   f"attention backend: {reason}")
    return layers


def layers_from_config(config: Any) -> list[AttentionLayer]:
    """One AttentionLayer per decoder layer from the config alone (head sizes, MLA's split K/V sizes,
    sliding windows by `layer_types`, logit softcap). Issue 9's hf_bridge.attention_layers_from_config
    is the full version; this reads the same fields."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    v_head_dim = head_dim
    if getattr(text, "qk_nope_head_dim", None) and getattr(text, "v_head_dim", None):
        head_dim, v_head_dim, kv_heads = text.qk_nope_head_dim + text.qk_rope_head_dim, text.v_head_dim, heads
    window = getattr(text, "sliding_window", None)
    max_len = getattr(text, "max_position_embeddings", None)
    if window is not None and (getattr(text, "use_sliding_window", True) is False
                               or (max_len is not None and window >= max_len)):
        window = None  # off, or never shorter than the context
    layer_types = getattr(text, "layer_types", None)
    softcap = getattr(text, "attn_logit_softcapping", None) or None
    scale = float(getattr(text, "query_pre_attn_scalar", None) or head_dim) ** -0.5
    layers = []
    for i in range(text.num_hidden_layers):
        windowed = window is not None and (layer_types is None or layer_types[i] == "sliding_attention")
        layers.append(AttentionLayer(i, heads, kv_heads, head_dim, v_head_dim, scale,
                                     sliding_window=int(window) if windowed else None, logit_softcap=softcap))
    return layers
