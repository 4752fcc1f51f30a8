"""The dry forward's check: what transformers really does, against the layer facts read at install.

The model runner runs one token through the model twice, at engine build, with a `CallCheck` on the
forward context: once with masks reported as below, once with the mask hook answering None as in
every serving step (model code may pass other keywords when it gets no mask). Then
- every mask transformers asks for (create_causal_mask, create_sliding_window_causal_mask, with
  whatever overlays the model adds) reaches our mask hook with its `mask_function`; the hook works
  out which pattern it is (`mask_pattern`: causal, causal with a window of w, or anything else,
  which is refused) and hands the model a `MaskSeen` marker instead of a tensor;
- every attention call is checked (`check_call`): head counts and sizes, the marker it got (its
  window must be the layer's), and every keyword argument (known ones must agree with the facts,
  an unknown one with a value that could change the result is refused);
- `finish` checks that every layer was called once, and that the facts transformers conveys only
  by keyword (softcap, sinks) were really passed: a config value the model never applies is a
  disagreement too.
Any disagreement is an UnsupportedModel naming the model, the layer and the feature. Steps after
the dry run pay for none of this: the hook returns None and the attention function skips checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from npu_serve.attention.backend import AttentionLayer
from npu_serve.attention.layer_facts import normalise_window
from npu_serve.errors import UnsupportedModel

# Keyword arguments that cannot change what attention computes here: RoPE has already used the
# positions, and the cache flags concern transformers' own KV cache, which we do not use.
_HARMLESS_KWARGS = frozenset({"position_ids", "use_cache", "cache_position"})
_GRID = 48  # the mask pattern is checked exactly on this many positions squared (and on one long row)


@dataclass(frozen=True)
class MaskSeen:
    """What the dry run's mask hook hands the model in place of a mask: the pattern it asked for."""

    window: int | None  # None: plain causal
    # Why npu-serve cannot run this mask (None when it can). A model may build masks it never uses
    # (Qwen2-MoE builds a windowed one even without windowed layers), so only a layer that receives
    # such a mask is refused.
    problem: str | None = None


def mask_pattern(mask_function, context: int) -> int | None:
    """The window w of a transformers mask function that is causal with keys > q - w allowed (None
    for plain causal), probed on one row of `context` positions and on a small full grid. Raises
    ValueError for any other pattern (bidirectional parts, blocks, packed-sequence masks)."""
    zero = torch.zeros((), dtype=torch.long)
    last = context - 1
    row = torch.as_tensor(mask_function(zero, zero, torch.tensor(last), torch.arange(context + 1))).bool()
    row = row.expand(context + 1)
    if row[context]:
        raise ValueError("it lets a query see a later key")
    seen = torch.nonzero(row).flatten()
    if seen.numel() == 0 or not row[last] or seen.numel() != last - int(seen[0]) + 1:
        raise ValueError("a query does not see one contiguous run of keys ending at itself")
    window = None if int(seen[0]) == 0 else last - int(seen[0]) + 1
    q = torch.arange(_GRID)[:, None]
    kv = torch.arange(_GRID)[None, :]
    grid = torch.as_tensor(mask_function(zero, zero, q, kv)).bool().expand(_GRID, _GRID)
    want = kv <= q
    if window is not None:
        want &= kv > q - window
    if not torch.equal(grid, want):
        raise ValueError("it is not causal (with or without a sliding window) for every query")
    return window


@dataclass
class CallCheck:
    """Set on the forward context for the dry run; records what each layer was called with."""

    label: str
    max_len: int  # the model's context: a window at least this long is no window
    # True: the mask hook reports each mask's pattern (MaskSeen) for checking. False: it returns None,
    # as in every serving step, so the keyword arguments checked are those the steps will see.
    with_masks: bool = True
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # layer -> its keyword arguments
    num_calls: int = 0

    def mask(self, mask_function) -> MaskSeen:
        """The mask hook's answer during the dry run: the pattern, or why we cannot run it."""
        try:
            window = mask_pattern(mask_function, self.max_len)
        except Exception as exc:  # noqa: BLE001 - any mask we cannot read is one we cannot run
            return MaskSeen(None, f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc))
        return MaskSeen(normalise_window(window, self.max_len))

    def finish(self, layers: list[AttentionLayer]) -> None:
        if self.num_calls != len(layers) or sorted(self.calls) != [layer.layer_idx for layer in layers]:
            raise UnsupportedModel(f"{self.label}: the attention layers called in a forward ({sorted(self.calls)}, "
                                   f"{self.num_calls} calls) are not the {len(layers)} layers its config describes")
        for layer in layers:
            kwargs = self.calls[layer.layer_idx]
            where = f"{self.label}: layer {layer.layer_idx}"
            if layer.logit_softcap is not None and not kwargs.get("softcap"):
                raise UnsupportedModel(f"{where}: its config sets an attention logit softcap of {layer.logit_softcap}, "
                                       "but transformers' attention for it passes none (so does not apply it); "
                                       "npu-serve will not guess which is meant")
            if layer.has_sinks and kwargs.get("s_aux") is None:
                raise UnsupportedModel(f"{where}: the module has attention sinks, but transformers does not pass them")


def check_call(check: CallCheck, module, layer: AttentionLayer, query, key, value, attention_mask,
               kwargs: dict) -> None:
    """One attention call of the dry run against its layer's facts (UnsupportedModel if they differ)."""
    where = f"{check.label}: layer {layer.layer_idx}"
    check.calls[layer.layer_idx] = dict(kwargs)
    check.num_calls += 1
    got = (query.shape[1], key.shape[1], query.shape[-1], key.shape[-1], value.shape[-1])
    want = (layer.num_heads, layer.num_kv_heads, layer.head_dim, layer.head_dim, layer.v_head_dim)
    if got != want:
        raise UnsupportedModel(f"{where}: attention tensors (query heads, kv heads, query/key/value head sizes) are "
                               f"{got}, but its config describes {want}")
    if isinstance(attention_mask, MaskSeen):
        if attention_mask.problem is not None:
            raise UnsupportedModel(f"{where}: the model masks it in a way npu-serve cannot reproduce "
                                   f"({attention_mask.problem}); npu-serve's paged attention is causal, with or "
                                   "without a sliding window")
        if attention_mask.window != layer.sliding_window:
            raise UnsupportedModel(f"{where}: transformers masks it with a sliding window of {attention_mask.window}, "
                                   f"but npu-serve read {layer.sliding_window} from its config")
    elif attention_mask is not None:
        raise UnsupportedModel(f"{where}: the model hands attention a mask it built itself; npu-serve's paged "
                               "attention is causal (with or without a sliding window) only")
    elif check.with_masks and (layer.sliding_window is not None or not getattr(module, "is_causal", True)):
        # No mask at all means SDPA's own causal flag decides: plain causal, or nothing.
        raise UnsupportedModel(f"{where}: the model asks for no attention mask, which is not the "
                               f"{'windowed' if layer.sliding_window else 'causal'} attention npu-serve read")
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
        if normalise_window(value, check.max_len) == layer.sliding_window:
            return None
        return f"but npu-serve read a sliding window of {layer.sliding_window} for it"
    if name == "softcap":
        if (value or None) == layer.logit_softcap:
            return None
        return f"but npu-serve read a logit softcap of {layer.logit_softcap} for it"
    if name == "s_aux":
        if value is None:
            return None if not layer.has_sinks else "but npu-serve read attention sinks for it"
        if not layer.has_sinks:
            return "which are attention sinks npu-serve did not read for it"
        if tuple(value.shape) != (layer.num_heads,):
            return f"but npu-serve runs sinks of one logit per query head ({layer.num_heads})"
        return None
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
