"""The C++ greedy argmax (kernels/npu_serve_kernels/sampling/cpu_argmax.h) against torch.argmax: the
same index in every row, ties (the first maximum), NaN (the first NaN), infinities, signed zeros, row
lengths around the 16-lane vector width, strided rows; and the sampler of a CPU engine uses it."""

from __future__ import annotations

import math

import pytest
import torch

from npu_serve_kernels.sampling import cpu as kernel

pytestmark = pytest.mark.skipif(not kernel.available(), reason="the C++ CPU kernels cannot be built here")


def _ext():
    from npu_serve_kernels.cpu_ops import EXT

    return EXT.load()


@pytest.mark.parametrize("rows", [1, 2, 3, 32, 65])
@pytest.mark.parametrize("vocab", [1, 15, 16, 17, 49152, 151936 + 5])
def test_random_rows_match_torch(rows, vocab):
    torch.manual_seed(rows * 7 + vocab)
    logits = torch.randn(rows, vocab) * 8
    assert torch.equal(_ext().argmax_rows(logits), logits.argmax(dim=-1))


def test_ties_nan_infinities_and_zeros_follow_torchs_rule():
    v = 50  # three full vectors and a tail
    cases = []
    for pos in (0, 5, 16, 31, 47, 49):
        row = torch.zeros(v)
        row[pos] = row[min(pos + 3, v - 1)] = 4.0  # a tie: the first one wins
        cases.append(row)
        row = torch.randn(v)
        row[pos] = math.nan  # NaN beats everything, even +inf before it
        row[0 if pos else 1] = math.inf
        cases.append(row)
        row = torch.randn(v)
        row[pos] = row[v - 1] = math.nan  # two NaNs: the first
        cases.append(row)
    cases.append(torch.full((v,), -math.inf))  # all -inf: index 0
    cases.append(torch.tensor([-0.0, 0.0] * (v // 2)) - 1.0 + 1.0)  # zeros of both signs: the first
    cases.append(torch.tensor([-1.0] * 20 + [0.0, -0.0] + [-2.0] * (v - 22)))
    cases.append(torch.tensor([-math.inf] * (v - 1) + [-1e30]))
    logits = torch.stack(cases)
    want = logits.argmax(dim=-1)
    assert torch.equal(_ext().argmax_rows(logits), want)
    for row, expect in zip(logits, want):  # one row at a time too (no pool)
        assert _ext().argmax_rows(row[None]).item() == expect.item()


def test_strided_rows_and_what_the_kernel_refuses():
    base = torch.randn(8, 300)
    view = base[::2, 7:290]  # rows 600 floats apart, each contiguous
    assert torch.equal(_ext().argmax_rows(view), view.argmax(dim=-1))
    for bad in (base.double(), base.bfloat16(), base.t(), base[0], torch.empty(3, 0)):
        with pytest.raises(RuntimeError, match="argmax_rows"):
            _ext().argmax_rows(bad)
        if bad.dim() == 2 and bad.shape[1] > 0:  # the Python entry falls back to torch instead
            assert torch.equal(kernel.argmax(bad), bad.argmax(dim=-1))


def test_a_cpu_engines_sampler_uses_it(tiny_llama_dir, monkeypatch):
    from npu_serve import LLM, SamplingParams

    calls = []
    real = kernel.argmax
    monkeypatch.setattr(kernel, "argmax", lambda logits: calls.append(tuple(logits.shape)) or real(logits))
    llm = LLM(tiny_llama_dir, device="cpu", dtype="float32")
    out = llm.generate([[5, 6, 7], [8, 9]], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert [len(o.outputs[0].token_ids) for o in out] == [3, 3]
    assert calls and all(shape[0] in (1, 2) for shape in calls)
