"""The logits' bf16 -> float32 conversion on our pool (kernels/npu_serve_kernels/decoder/cpu_fused.h,
`to_float`): the same bits as `Tensor.float()` for every bf16 value (NaN payloads, infinities, denormals
included), every length and tail, and torch's own conversion for what it does not take."""

from __future__ import annotations

import pytest
import torch
from npu_serve_kernels.decoder import cpu as decoder_kernels

pytestmark = pytest.mark.skipif(not decoder_kernels.available(), reason="the C++ CPU kernels cannot be built here")


def _to_float(x):
    return decoder_kernels.module().to_float(x)


def test_every_bf16_value_converts_to_its_float32_bits():
    every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    got = _to_float(every)
    assert got.dtype == torch.float32
    assert torch.equal(got.view(torch.int32), every.float().view(torch.int32))


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (32, 49152), (2, 5, 33), (0, 8)])
def test_shapes_and_tails(shape):
    x = torch.randn(shape).bfloat16()
    got = _to_float(x)
    assert got.shape == x.shape and got.dtype == torch.float32
    assert torch.equal(got, x.float())


def test_what_it_does_not_take_goes_through_torch():
    wide = torch.randn(8, 64).bfloat16()
    strided = wide[:, ::2]
    assert torch.equal(_to_float(strided), strided.float())
    half = torch.randn(4, 9).half()
    assert torch.equal(_to_float(half), half.float())
    already = torch.randn(4, 9)
    assert torch.equal(_to_float(already), already)
