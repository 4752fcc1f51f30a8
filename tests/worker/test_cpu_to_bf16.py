"""The kernels' float32 -> bf16 rounding (kernels/npu_serve_kernels/cpu_simd.h, `narrow_bf16`): every
output of the linears, the fused ops and the prefill attention goes through it. Where the CPU has
AVX512-BF16 it takes VCVTNEPS2BF16, which rounds as c10::BFloat16 does except for NaNs and denormals;
those lanes must take the integer path. Checked here against c10's rule, written out in numpy, over
every bf16 pattern's neighbourhood, and through the AMX linear's one-line epilogue."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from npu_serve_kernels.decoder import cpu as decoder_kernels
from npu_serve_kernels.linear import cpu as gemv

pytestmark = pytest.mark.skipif(not decoder_kernels.available(), reason="the C++ CPU kernels cannot be built here")


def _c10_round(bits: np.ndarray) -> np.ndarray:
    """c10::BFloat16's round_to_nearest_even on float32 bit patterns; any NaN -> 0x7FC0."""
    u = bits.astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = ((bits & 0x7F800000) == 0x7F800000) & ((bits & 0x007FFFFF) != 0)
    r[nan] = 0x7FC0
    return r


def _patterns() -> np.ndarray:
    """Every bf16 pattern as a float32's high half, with low halves at and around each rounding
    boundary (ties to even and odd, just below and above) and a random one."""
    high = np.arange(65536, dtype=np.uint32) << 16
    rng = np.random.default_rng(0)
    lows = [0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF]
    parts = [high | low for low in lows] + [high | rng.integers(0, 65536, 65536, dtype=np.uint32)]
    ordered = np.concatenate(parts)
    # Also shuffled, so that NaNs and denormals share 16-lane vectors with ordinary values.
    return np.concatenate([ordered, rng.permutation(ordered)])


def test_every_pattern_rounds_as_c10_does():
    bits = _patterns()
    got = decoder_kernels.module().to_bf16(torch.from_numpy(bits.view(np.float32).copy()))
    assert got.dtype == torch.bfloat16
    want = _c10_round(bits)
    diff = np.flatnonzero(got.view(torch.int16).numpy().view(np.uint16) != want)
    assert diff.size == 0, [hex(int(bits[i])) for i in diff[:8]]


def test_denormals_and_nans_beside_ordinary_values():
    """One odd lane in an otherwise ordinary vector: only that lane takes the integer path."""
    x = torch.randn(64)
    x[3] = 1e-40  # a float32 denormal: c10 keeps it (as a bf16 denormal); VCVTNEPS2BF16 gives zero
    x[20] = float("nan")
    x[37] = -float("nan")
    got = decoder_kernels.module().to_bf16(x)
    want = torch.from_numpy(_c10_round(x.numpy().view(np.uint32)).view(np.int16)).view(torch.bfloat16)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    assert got.view(torch.int16)[3] != 0 and got.view(torch.int16)[20] == 0x7FC0 == got.view(torch.int16)[37]


@pytest.mark.skipif(not (gemv.available() and gemv.amx_available()), reason="no AMX tiles here")
@pytest.mark.parametrize("m", [40, 600])  # 600 x 1024 outputs: past the size written with streaming stores
def test_amx_one_line_epilogue_gives_the_bias_paths_bits(m):
    """Without a bias a whole pair of output blocks is rounded by one VCVTNE2PS2BF16 (cpu_gemm.h,
    `Finish`); with a bias of -0.0 (x + -0.0 == x for every x) each half goes through store_tile. Rows
    with infinities make NaN sums, rows of tiny values denormal-free zeros: the same bits either way."""
    before = gemv.variant()
    gemv.set_variant("amx")
    try:
        torch.manual_seed(m)
        n, k = 1024, 64
        x = torch.randn(m, k).bfloat16()
        x[1, 0] = float("inf")
        x[2, :2] = torch.tensor([float("inf"), -float("inf")])
        x[3] = 1e-30
        w = (torch.randn(n, k) / k**0.5).bfloat16()
        packed = gemv.pack(w)
        plain = packed(x)
        biased = packed(x, torch.full((n,), -0.0).bfloat16())
        assert torch.isnan(plain[2]).any() and torch.isfinite(plain[4:]).all()
        assert torch.equal(plain.view(torch.int16), biased.view(torch.int16))
    finally:
        gemv.set_variant(before)
