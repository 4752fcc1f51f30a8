"""The per-step state our attention function needs but transformers does not pass through.

transformers calls the registered attention function with (module, q, k, v, mask, ...), layer by
layer, from inside the HF model's forward. The batch metadata and the KV tensors for this step are
set here by the model runner around that forward call. The engine loop runs one forward at a time
on one thread, so a module-level slot is enough (and cheaper than a contextvar lookup per layer).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from npu_serve.attention.backend import AttentionBackend, AttentionLayer, AttentionMetadata

if TYPE_CHECKING:
    from npu_serve.attention.hf_bridge import CallCheck


@dataclass
class ForwardContext:
    meta: AttentionMetadata
    kv_caches: list[Any]  # one (key_cache, value_cache) pair per layer, indexed by module.layer_idx
    backend: AttentionBackend
    layers: list[AttentionLayer]  # the per-layer facts, indexed the same way
    check: CallCheck | None = None  # set only for the dry run after install (hf_bridge)


_current: ForwardContext | None = None


@contextmanager
def forward_context(ctx: ForwardContext) -> Iterator[None]:
    global _current
    previous, _current = _current, ctx
    try:
        yield
    finally:
        _current = previous


def get_forward_context() -> ForwardContext:
    if _current is None:
        raise RuntimeError("npu_serve attention was called outside a model-runner step")
    return _current
