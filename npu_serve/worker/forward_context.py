"""The per-step state our attention function needs but transformers does not pass through.

transformers calls the registered attention function with (module, q, k, v, mask, ...), layer by
layer, from inside the HF model's forward. The batch metadata and the KV tensors for this step are
set here by the model runner around that forward call. The engine loop runs one forward at a time
on one thread, so a module-level slot is enough (and cheaper than a contextvar lookup per layer).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from npu_serve.attention.backend import AttentionBackend, AttentionMetadata


@dataclass
class ForwardContext:
    meta: AttentionMetadata
    kv_caches: list[torch.Tensor]  # one per layer, indexed by module.layer_idx
    backend: AttentionBackend


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
