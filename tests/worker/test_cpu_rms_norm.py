"""RMSNorm in the C++ decoder layer (kernels/npu_serve_kernels/decoder/cpu_fused.h): transformers'
LlamaRMSNorm bit for bit, for every width and row count it meets, bf16 and fp32, whether it sums the
squares itself in torch's order (where that order is found to be torch's here) or calls torch's mean."""

from __future__ import annotations

import pytest
import torch
from npu_serve_kernels.decoder import cpu as decoder_kernels

pytestmark = pytest.mark.skipif(not decoder_kernels.available(), reason="the C++ CPU kernels cannot be built here")


def _transformers_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # LlamaRMSNorm.forward, op for op.
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("C", [5, 8, 64, 100, 576, 960, 1536, 2048, 4099])
@pytest.mark.parametrize("rows", [1, 3, 32, 300])
def test_matches_transformers_bit_for_bit(dtype, C, rows):
    torch.manual_seed(C * 1000 + rows)
    # Rows of very different scales, so that any other order of the sum shows in the last bit.
    x = (torch.randn(1, rows, C) * torch.logspace(-3, 3, rows).unsqueeze(-1)).to(dtype)
    weight = torch.randn(C).to(dtype)
    got = decoder_kernels.module().rms_norm(x, weight, 1e-5)
    want = _transformers_rms_norm(x, weight, 1e-5)
    assert torch.equal(got.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       want.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))


def test_special_values_match_too():
    C = 576
    x = torch.randn(1, 6, C)
    x[0, 0, 3] = float("inf")
    x[0, 1, 7] = float("nan")
    x[0, 2] = 0.0
    x[0, 3, :] = 1e30
    x[0, 4, :] = 1e-30
    x = x.bfloat16()
    weight = torch.randn(C).bfloat16()
    got = decoder_kernels.module().rms_norm(x, weight, 1e-6)
    want = _transformers_rms_norm(x, weight, 1e-6)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.view(torch.int16)[~want.isnan()], want.view(torch.int16)[~want.isnan()])


def test_the_default_models_width_sums_itself_on_the_pinned_torch():
    """SmolLM2's 576 (and the other widths of the tests above) take the one-pass path on x86 with the
    torch this project pins, so the tests above check our sum, not only torch's."""
    import platform

    lanes = decoder_kernels.module().rms_norm_sum_lanes(576)
    if platform.machine() in ("x86_64", "AMD64") and torch.__version__.startswith("2.13."):
        assert lanes in (8, 16)
    else:
        assert lanes in (0, 8, 16)
