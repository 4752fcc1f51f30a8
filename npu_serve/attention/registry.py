"""Attention backends by name: "torch" (reference), "cpu" (reference + C++ decode kernel), "triton"
(CUDA), "npu" (Ascend).

Each backend module is imported only when its name is asked for, so choosing "torch" never imports
triton or torch_npu, and a machine without them can still list and use the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this module stays torch-free, so the config can list the names
    from npu_serve.attention.backend import AttentionBackend

# name -> (module, class)
_BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("npu_serve.attention.torch_ref", "TorchAttentionBackend"),
    "cpu": ("npu_serve.attention.cpu", "CpuAttentionBackend"),
    "triton": ("npu_serve.attention.triton", "TritonAttentionBackend"),
    "npu": ("npu_serve.attention.npu", "NpuAttentionBackend"),
}


def backend_names() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str) -> AttentionBackend:
    """A new instance of the backend called `name`; ValueError for an unknown name."""
    try:
        module_name, class_name = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(_BACKENDS)}") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls()
