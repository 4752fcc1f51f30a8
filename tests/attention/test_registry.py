"""Backends by name, imported lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

from npu_serve.attention.backend import AttentionBackend
from npu_serve.attention.registry import backend_names, get_backend


def test_names_and_torch_backend():
    assert backend_names() == ["torch", "triton", "npu"]
    backend = get_backend("torch")
    assert isinstance(backend, AttentionBackend) and backend.name == "torch"
    assert type(backend).__name__ == "TorchAttentionBackend"


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of torch, triton, npu"):
        get_backend("flash")


def test_triton_and_npu_backends_construct_without_their_libraries():
    # Constructing must not import triton or torch_npu: that happens at the first forward.
    code = (
        "import sys; from npu_serve.attention.registry import get_backend; "
        "names = [get_backend(n).name for n in ('torch', 'triton', 'npu')]; "
        "print(names, 'triton' in sys.modules, 'torch_npu' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['torch', 'triton', 'npu'] False False"
