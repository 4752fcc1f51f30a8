"""SwiGLU's silu(gate) * up from torch's own silu table (kernels/npu_serve_kernels/decoder/cpu_fused.h):
torch's bits for every bf16 gate value whose result is a number, NaN where torch's is NaN; every shape
and tail length; it declines what it cannot serve, and the C++ decoder layer's MLP, which calls it, still equals transformers'."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from npu_serve_kernels.decoder import cpu as decoder_kernels

pytestmark = pytest.mark.skipif(not decoder_kernels.available(), reason="the C++ CPU kernels cannot be built here")


def _silu_mul(gate, up):
    return decoder_kernels.module().silu_mul(gate, up)


def _bits(t):
    return t.view(torch.int16)


def _assert_torchs_bits(got, gate, up):
    want = F.silu(gate) * up
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan), "NaN exactly where torch's result is NaN"
    assert torch.equal(_bits(got)[~nan], _bits(want)[~nan])


@pytest.mark.parametrize("seed", [0, 1])
def test_every_bf16_gate_value_gives_torchs_bits(seed):
    if not decoder_kernels.module().gemm_available():
        pytest.skip("no AVX-512 here: the op declines (tested below)")
    gate = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    g = torch.Generator().manual_seed(seed)
    up = (torch.randn(65536, generator=g) * 4).bfloat16()
    up[:8] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -1e-40, 3.0e38])
    got = _silu_mul(gate, up)
    assert got is not None
    _assert_torchs_bits(got, gate, up)
    # and with up = 1, the silu values themselves (rounded once more, which leaves a bf16 unchanged)
    ones = torch.ones(65536, dtype=torch.bfloat16)
    _assert_torchs_bits(_silu_mul(gate, ones), gate, ones)


@pytest.mark.parametrize("shape", [(1, 1, 1536), (1, 7, 1536), (1, 512, 1536), (3, 5, 17), (1000,), (1,)])
def test_shapes_and_tails(shape):
    if not decoder_kernels.module().gemm_available():
        pytest.skip("no AVX-512 here")
    torch.manual_seed(sum(shape))
    gate, up = (torch.randn(*shape) * 3).bfloat16(), torch.randn(*shape).bfloat16()
    got = _silu_mul(gate, up)
    assert got.shape == gate.shape and got.dtype == torch.bfloat16
    assert torch.equal(got, F.silu(gate) * up)


def test_declines_what_it_cannot_serve():
    g = torch.randn(4, 64)
    assert _silu_mul(g, g) is None  # fp32
    b = g.bfloat16()
    assert _silu_mul(b, b[:, :32]) is None  # shapes differ
    assert _silu_mul(b.t(), b.t()) is None  # not contiguous
    assert _silu_mul(b, b.half()) is None  # dtypes differ


def test_the_decoder_layers_mlp_still_equals_transformers():
    """attention_out_mlp's result equals transformers' MLP op for op (silu, mul) on the same tensors."""
    if not decoder_kernels.module().gemm_available():
        pytest.skip("no AVX-512 here")
    ext = decoder_kernels.module()
    torch.manual_seed(0)
    C, I, T = 64, 96, 9
    lin = [torch.nn.Linear(a, b, bias=False).bfloat16() for a, b in ((C, C), (C, C), (C, C), (C, C), (C, I), (C, I), (I, C))]
    mk = [ext.Linear(m.weight.detach(), None, None, 0) for m in lin]
    norm = torch.ones(C, dtype=torch.bfloat16)
    layer = ext.DecoderLayer(norm, norm, 1e-5, *mk, None, None, 1e-6, 4, 4, 16, 16)
    x = torch.randn(1, T, C).bfloat16()
    attn = torch.randn(T, 4, 16).bfloat16()
    got = layer.attention_out_mlp(x, attn)
    with torch.no_grad():
        mid = x + lin[3](attn.reshape(1, T, C))
        h32 = mid.float()
        h = norm * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
        want = mid + lin[6](F.silu(lin[4](h)) * lin[5](h))
    assert torch.equal(got, want)
