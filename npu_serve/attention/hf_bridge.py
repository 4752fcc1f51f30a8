"""The one file that knows transformers' attention-function signature.

transformers (5.x) calls `ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, query, key,
value, attention_mask, scaling=..., dropout=..., **kwargs)` from every attention layer, with
query/key/value shaped [batch, heads, tokens, head_dim] after RoPE, and expects back
(attn_output [batch, tokens, heads, head_dim], attn_weights). We register our function under one
name, plus a mask function that returns None: our backends build causality from the batch metadata,
so the [T, T] mask transformers would otherwise materialise for a packed batch is pure waste.

Checked against transformers 5.17 (the GPU machine) and 5.24 (here): both pass `module.layer_idx`
and `scaling`, and both consult AttentionMaskInterface by the same name.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from npu_serve.worker.forward_context import get_forward_context

ATTN_IMPLEMENTATION = "npu_serve"


def _paged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    ctx = get_forward_context()
    # [1, H, T, D] -> [T, H, D]: the packed batch is one "sequence" of T tokens to transformers.
    q = query[0].transpose(0, 1)
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    if scaling is None:
        scaling = q.shape[-1] ** -0.5
    out = ctx.backend.forward(q, k, v, ctx.kv_caches[module.layer_idx], ctx.meta, scaling)
    return out.unsqueeze(0), None


def _no_mask(*args, **kwargs) -> None:
    return None


def install(model: torch.nn.Module) -> None:
    """Route every attention layer of `model` through the paged backend of the current step."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, _paged_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _no_mask)
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    except (AttributeError, ValueError):
        # Older 5.x releases validate names differently; the config field is what layers read.
        model.config._attn_implementation = ATTN_IMPLEMENTATION
    sliding = getattr(model.config, "sliding_window", None) if getattr(model.config, "use_sliding_window", False) else None
    if sliding:
        raise NotImplementedError("sliding-window attention is not supported by npu-serve's paged backends yet")
