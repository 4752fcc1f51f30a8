"""The one file that knows transformers' attention-function signature.

transformers (5.x) calls `ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, query, key,
value, attention_mask, scaling=..., dropout=..., **kwargs)` from every attention layer, with
query/key/value shaped [batch, heads, tokens, head_dim] after RoPE, and expects back
(attn_output [batch, tokens, heads, head_dim], attn_weights). We register our function under one
name, plus a mask function that returns None: our backends build causality (and windows) from the
batch metadata, so the [T, T] mask transformers would otherwise materialise for a packed batch is
pure waste. (During the dry run the mask function reports which pattern the model asked for
instead, call_check.py.)

Never drop what we do not implement. transformers hands attention features over as keyword
arguments (`sliding_window`, `softcap`, `s_aux`, ...). They are read once, from the config and
`layer_types`, into one `AttentionLayer` per layer (`attention_layers`, layer_facts.py); `install`
refuses a model whose layers the backend cannot compute (`backend.unsupported`). The first forward
after install (the model runner's dry run on one token) checks every mask and every call against
those facts (call_check.py). Steps after that pay for none of it.

Checked against transformers 5.17 (the GPU machine) and 5.24 (here): both pass `module.layer_idx`
and `scaling`, and both consult AttentionMaskInterface by the same name.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from npu_serve.attention.backend import AttentionBackend, AttentionLayer
from npu_serve.attention.call_check import CallCheck, MaskSeen, check_call
from npu_serve.attention.layer_facts import (  # noqa: F401  (re-exported: the bridge's public names)
    attention_layers, attention_layers_from_config, max_len_of, model_label,
)
from npu_serve.errors import UnsupportedModel
from npu_serve.worker.forward_context import get_forward_context

ATTN_IMPLEMENTATION = "npu_serve"


def dry_run_check(model: torch.nn.Module, with_masks: bool = True) -> CallCheck:
    """The CallCheck for one of the model runner's dry forwards of this model (call_check.py)."""
    return CallCheck(model_label(model.config), max_len_of(model.config), with_masks)


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
    label = model_label(model.config)
    for layer in layers:
        reason = backend.unsupported(layer)
        if reason is not None:
            raise UnsupportedModel(f"{label}: layer {layer.layer_idx} needs something npu-serve cannot run: {reason}")
    AttentionInterface.register(ATTN_IMPLEMENTATION, _paged_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _mask_hook)
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    except (AttributeError, ValueError):
        # Older 5.x releases validate names differently; the config field is what layers read.
        model.config._attn_implementation = ATTN_IMPLEMENTATION
    return layers


def _paged_attention(module, query, key, value, attention_mask, **kwargs):
    ctx = get_forward_context()
    layer = ctx.layers[module.layer_idx]
    if ctx.check is not None:
        check_call(ctx.check, module, layer, query, key, value, attention_mask, kwargs)
    # [1, H, T, D] -> [T, H, D]: the packed batch is one "sequence" of T tokens to transformers.
    q = query[0].transpose(0, 1)
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    cache = ctx.kv_caches[layer.layer_idx]
    if layer.has_sinks:  # gpt-oss: per-head sink logits, passed as `s_aux` (checked in the dry run)
        out = ctx.backend.forward(q, k, v, cache, ctx.meta, layer, sinks=kwargs["s_aux"])
    else:
        out = ctx.backend.forward(q, k, v, cache, ctx.meta, layer)
    return out.unsqueeze(0), None


def _mask_hook(*args, mask_function=None, **kwargs) -> MaskSeen | None:
    """transformers' mask interface: no mask (our backends mask from the batch metadata), except in
    the dry run, where the pattern the model asked for is checked and handed on as a MaskSeen."""
    ctx = get_forward_context()
    if ctx.check is None or not ctx.check.with_masks:
        return None
    if mask_function is None:
        raise UnsupportedModel(f"{ctx.check.label}: transformers asked for an attention mask without a mask function; "
                               "npu-serve cannot tell which pattern it means")
    return ctx.check.mask(mask_function)
