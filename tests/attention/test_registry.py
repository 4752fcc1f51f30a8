"""Backends by name, imported lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

from npu_serve.attention.backend import AttentionBackend
from npu_serve.attention.registry import backend_names, get_backend


def test_names_and_torch_backend():
    assert backend_names() == ["torch", "cpu", "triton", "npu"]
    backend = get_backend("torch")
    assert isinstance(backend, AttentionBackend) and backend.name == "torch"
    assert type(backend).__name__ == "TorchAttentionBackend"


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of torch, cpu, triton, npu"):
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


def test_cpu_backend_matches_the_torch_reference_on_a_mixed_batch():
    """The "cpu" backend (C++ decode kernel) against the pure torch reference, decodes and a chunk."""
    import torch

    from npu_serve.attention.backend import AttentionLayer, AttentionMetadata

    cpu = get_backend("cpu")
    if not cpu.uses_kernel:
        import pytest

        pytest.skip("the C++ decode kernel could not be built here")
    torch.manual_seed(0)
    bs, nb, h, hkv, d = 16, 64, 9, 3, 64
    seq_lens, q_lens = [5, 37, 64, 100], [1, 1, 1, 20]
    tables = torch.zeros(4, 8, dtype=torch.int32)
    free = list(range(1, nb))
    slots = []
    for i, (n, q) in enumerate(zip(seq_lens, q_lens)):
        blocks = [free.pop() for _ in range(-(-n // bs))]
        tables[i, : len(blocks)] = torch.tensor(blocks)
        slots += [blocks[p // bs] * bs + p % bs for p in range(n - q, n)]
    qsl = [0]
    for q in q_lens:
        qsl.append(qsl[-1] + q)
    meta = AttentionMetadata(num_tokens=qsl[-1], num_decodes=3, query_start_loc=torch.tensor(qsl, dtype=torch.int32),
                             seq_lens=torch.tensor(seq_lens, dtype=torch.int32), block_tables=tables,
                             slot_mapping=torch.tensor(slots), query_start_loc_cpu=qsl, seq_lens_cpu=seq_lens,
                             block_size=bs)
    cache = torch.randn(2, nb, bs, hkv, d)
    q, k, v = torch.randn(qsl[-1], h, d), torch.randn(qsl[-1], hkv, d), torch.randn(qsl[-1], hkv, d)
    layer = AttentionLayer(layer_idx=0, num_heads=h, num_kv_heads=hkv, head_dim=d, v_head_dim=d, scale=0.125)
    want = get_backend("torch").forward(q, k, v, cache.clone(), meta, layer)
    got = cpu.forward(q, k, v, cache.clone(), meta, layer)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
