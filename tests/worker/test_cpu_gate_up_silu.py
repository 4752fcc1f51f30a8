"""SwiGLU's first half in one AMX pass (kernels/npu_serve_kernels/linear/cpu_gemm.h, `gate_up_silu`):
silu(x @ gate.T) * (x @ up.T) with the bits of the two linears followed by silu_mul, for decode batches,
prefill chunks (the AMX tiles' K chunks from 256 rows, streaming stores past 1 MiB of output), odd block
counts; and it declines what it does not run, so the decoder layer falls back to the two linears."""

from __future__ import annotations

import pytest
import torch
from npu_serve_kernels.decoder import cpu as decoder_kernels
from npu_serve_kernels.linear import cpu as gemv

from tests.worker.amx import amx, needs_tiles  # noqa: F401  (amx: a fixture)

pytestmark = needs_tiles


def _two_passes(x, gate, up):
    return decoder_kernels.module().silu_mul(gate(x), up(x))


@pytest.mark.parametrize("m", [1, 7, 32, 33, 300, 600])
@pytest.mark.parametrize("n,k", [(1536, 576), (48, 64), (1024, 1536)])
def test_one_pass_gives_the_two_passes_bits(amx, m, n, k):
    torch.manual_seed(m + n + k)
    x = torch.randn(m, k).bfloat16()
    x[0, :2] = torch.tensor([float("inf"), 1e-30])  # NaN and huge sums in row 0: the same bits either way
    gate = gemv.pack((torch.randn(n, k) / k**0.5).bfloat16())
    up = gemv.pack((torch.randn(n, k) / k**0.5).bfloat16())
    got = decoder_kernels.module().gate_up_silu(x, gate, up)
    assert got is not None and got.shape == (m, n) and got.dtype == torch.bfloat16
    want = _two_passes(x, gate, up)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_declines_what_it_does_not_run(amx):
    x = torch.randn(4, 64).bfloat16()
    w = lambda n, k=64: gemv.pack(torch.randn(n, k).bfloat16())  # noqa: E731
    ext = decoder_kernels.module()
    assert ext.gate_up_silu(x, w(40), w(40)) is None  # N not a multiple of 16
    assert ext.gate_up_silu(x, w(32), w(48)) is None  # different shapes
    assert ext.gate_up_silu(torch.randn(4, 100).bfloat16(), w(32, 100), w(32, 100)) is None  # K not a multiple of 32
    gemv.set_variant("dot")
    assert ext.gate_up_silu(x, w(32), w(32)) is None  # the linears would not run on the AMX tiles
