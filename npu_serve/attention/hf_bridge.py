"""The one file that knows transformers' attention-function signature.

transformers (5.x) calls `ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, query, key,
value, attention_mask, scaling=..., dropout=..., **kwargs)` from every attention layer, with
query/key/value shaped [batch, heads, tokens, head_dim] after RoPE, and expects back
(attn_output [batch, tokens, heads, head_dim], attn_weights). We register our function under one
name, plus a mask function that returns None: our backends build causality (and windows) from the
batch metadata, so the [T, T] mask transformers would otherwise materialise for a packed batch is
pure waste.

Never drop what we do not implement. transformers hands attention features over as keyword
arguments (`sliding_window`, `softcap`, `s_aux`, ...). They are read once, from the config and
`layer_types`, into one `AttentionLayer` per layer (`attention_layers`); `install` refuses a model
whose layers the backend cannot compute (`backend.unsupported`). The first forward after install
(the model runner's dry run on one token) checks every call against those facts: the tensors' head
counts and sizes, every keyword argument (known ones must agree with the facts, an unknown one with
a value that could change the result is refused), and that every layer was called. Steps after that
pay for none of it.

Checked against transformers 5.17 (the GPU machine) and 5.24 (here): both pass `module.layer_idx`
and `scaling`, and both consult AttentionMaskInterface by the same name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from npu_serve.attention.backend import AttentionBackend, AttentionLayer
from npu_serve.errors import UnsupportedModel
from npu_serve.worker.forward_context import get_forward_context

ATTN_IMPLEMENTATION = "npu_serve"

# Layer types (config.layer_types) whose attention is causal softmax attention, windowed or not.
_FULL, _SLIDING = "full_attention", "sliding_attention"
# Keyword arguments that cannot change what attention computes here: RoPE has already used the
# positions, and the cache flags concern transformers' own KV cache, which we do not use.
_HARMLESS_KWARGS = frozenset({"position_ids", "use_cache", "cache_position"})


def attention_layers(model: torch.nn.Module) -> list[AttentionLayer]:
    """The facts of every attention layer of a loaded model: geometry and features from its config
    (`attention_layers_from_config`), the softmax scale from the modules themselves (`scaling`, which
    folds in query_pre_attn_scalar, YaRN's mscale and the like)."""
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

    A sliding window at least as long as the model's context can never drop a key: it is recorded
    as no window. Layer types other than full and sliding attention are refused.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    name = _model_label(config)
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    v_head_dim = head_dim
    if getattr(text, "qk_nope_head_dim", None) and getattr(text, "v_head_dim", None):
        # MLA as transformers runs it: the latent is expanded to per-head K (nope + rope) and V.
        head_dim = text.qk_nope_head_dim + text.qk_rope_head_dim
        v_head_dim = text.v_head_dim
        kv_heads = heads
    scale = float(getattr(text, "query_pre_attn_scalar", None) or head_dim) ** -0.5
    softcap = getattr(text, "attn_logit_softcapping", None)
    max_len = max_len_of(text)
    layer_types = getattr(text, "layer_types", None)
    layers = []
    for i in range(text.num_hidden_layers):
        kind = layer_types[i] if layer_types is not None else (_SLIDING if getattr(text, "sliding_window", None) else _FULL)
        if kind not in (_FULL, _SLIDING):
            raise UnsupportedModel(f"{name}: layer {i} is of type {kind!r}; npu-serve runs full and "
                                   "sliding-window attention layers only")
        window = _window(getattr(text, "sliding_window", None), max_len) if kind == _SLIDING else None
        layers.append(AttentionLayer(
            layer_idx=i, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, v_head_dim=v_head_dim,
            scale=scale, sliding_window=window, logit_softcap=softcap or None,
        ))
    return layers


def _window(value: int | None, max_len: int | None) -> int | None:
    if value is None or (max_len is not None and value >= max_len):
        return None
    return int(value)


def _model_label(config: Any) -> str:
    model_type = getattr(config, "model_type", None) or type(config).__name__
    path = getattr(config, "name_or_path", "") or ""
    return f"{model_type} model {path!r}" if path else f"{model_type} model"


def max_len_of(config: Any) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def dry_run_check(model: torch.nn.Module) -> CallCheck:
    """The CallCheck for the model runner's dry forward of this model."""
    return CallCheck(_model_label(model.config), max_len_of(model.config))


def install(model: torch.nn.Module, backend: AttentionBackend,
            heads: tuple[int, int] | None = None) -> list[AttentionLayer]:
    """Route every attention layer of `model` through `backend`; returns the layers' facts.

    `heads` = (query heads, KV heads) of this rank when the model is split over tensor-parallel ranks
    (distributed/sharding.py): the facts, and the dry run's check of the tensors, are per rank.
    Raises UnsupportedModel when the backend cannot compute some layer exactly.
    """
    layers = attention_layers(model)
    if heads is not None:
        layers = [replace(layer, num_heads=heads[0], num_kv_heads=heads[1]) for layer in layers]
    label = _model_label(model.config)
    for layer in layers:
        reason = backend.unsupported(layer)
        if reason is not None:
            raise UnsupportedModel(f"{label}: layer {layer.layer_idx} needs something npu-serve cannot run: {reason}")
    AttentionInterface.register(ATTN_IMPLEMENTATION, _paged_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _no_mask)
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    except (AttributeError, ValueError):
        # Older 5.x releases validate names differently; the config field is what layers read.
        model.config._attn_implementation = ATTN_IMPLEMENTATION
    return layers


@dataclass
class CallCheck:
    """Set on the forward context for the dry run: every attention call is checked against the
    facts, and the layers seen are recorded (each must be called exactly once)."""

    label: str
    max_len: int | None  # the model's context: a window at least this long is no window
    seen: list[int] = field(default_factory=list)

    def finish(self, layers: list[AttentionLayer]) -> None:
        if sorted(self.seen) != [layer.layer_idx for layer in layers]:
            raise UnsupportedModel(f"{self.label}: the attention layers called in a forward ({sorted(self.seen)}) are "
                                   f"not the {len(layers)} layers its config describes")


def _check_call(check: CallCheck, layer: AttentionLayer, query, key, value, attention_mask, kwargs: dict) -> None:
    where = f"{check.label}: layer {layer.layer_idx}"
    check.seen.append(layer.layer_idx)
    got = (query.shape[1], key.shape[1], query.shape[-1], key.shape[-1], value.shape[-1])
    want = (layer.num_heads, layer.num_kv_heads, layer.head_dim, layer.head_dim, layer.v_head_dim)
    if got != want:
        raise UnsupportedModel(f"{where}: attention tensors (query heads, kv heads, query/key/value head sizes) are "
                               f"{got}, but its config describes {want}")
    if attention_mask is not None:
        raise UnsupportedModel(f"{where}: the model builds its own attention mask; npu-serve's paged attention "
                               "is causal (and windowed) only")
    for name, value_ in kwargs.items():
        problem = _kwarg_problem(check, layer, name, value_)
        if problem is not None:
            raise UnsupportedModel(f"{where}: transformers passes attention keyword {name}={_short(value_)}, {problem}")


def _kwarg_problem(check: CallCheck, layer: AttentionLayer, name: str, value: Any) -> str | None:
    """None when the keyword is compatible with the layer's facts; else why it is refused."""
    if name in _HARMLESS_KWARGS:
        return None
    if name == "scaling":
        if value is None or math.isclose(float(value), layer.scale, rel_tol=1e-6):
            return None
        return f"but npu-serve read a softmax scale of {layer.scale} for it"
    if name == "dropout":
        return None if not value else "and attention dropout is for training only"
    if name == "sliding_window":
        if _window(value, check.max_len) == layer.sliding_window:
            return None
        return f"but npu-serve read a sliding window of {layer.sliding_window} for it"
    if name == "softcap":
        if (value or None) == layer.logit_softcap:
            return None
        return f"but npu-serve read a logit softcap of {layer.logit_softcap} for it"
    if name == "s_aux":
        return None if (value is not None) == layer.has_sinks else "which does not match the sinks npu-serve read"
    if name == "is_causal":
        return None if value is None or value else "and npu-serve's paged attention is causal only"
    if value is None or value is False:
        return None  # an unset option cannot change the result
    return "which npu-serve's paged attention does not implement"


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"<tensor {tuple(value.shape)}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _paged_attention(module, query, key, value, attention_mask, **kwargs):
    ctx = get_forward_context()
    layer = ctx.layers[module.layer_idx]
    if ctx.check is not None:
        _check_call(ctx.check, layer, query, key, value, attention_mask, kwargs)
    # [1, H, T, D] -> [T, H, D]: the packed batch is one "sequence" of T tokens to transformers.
    q = query[0].transpose(0, 1)
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    out = ctx.backend.forward(q, k, v, ctx.kv_caches[layer.layer_idx], ctx.meta, layer)
    return out.unsqueeze(0), None


def _no_mask(*args, **kwargs) -> None:
    return None
