"""The C++ greedy argmax (kernels/npu_serve_kernels/sampling/cpu_argmax.h) against torch.argmax, on fp32
and bf16 rows: the same index in every row, ties (the first maximum), NaN (the first NaN), infinities,
signed zeros, every bf16 value, row lengths around the 16-lane vector width, strided rows; and the
sampler of a CPU engine uses it, on bf16 logits without an fp32 copy for greedy rows."""

from __future__ import annotations

import math

import pytest
import torch

from npu_serve_kernels.linear import cpu as linear
from npu_serve_kernels.sampling import cpu as kernel

pytestmark = pytest.mark.skipif(not kernel.available(), reason="the C++ CPU kernels cannot be built here")


def _ext():
    from npu_serve_kernels.cpu_ops import EXT

    return EXT.load()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 3, 32, 65])
@pytest.mark.parametrize("vocab", [1, 15, 16, 17, 49152, 151936 + 5])
def test_random_rows_match_torch(rows, vocab, dtype):
    torch.manual_seed(rows * 7 + vocab)
    logits = (torch.randn(rows, vocab) * 8).to(dtype)
    got = _ext().argmax_rows(logits)
    assert torch.equal(got, logits.argmax(dim=-1))
    assert torch.equal(got, logits.float().argmax(dim=-1))  # what the sampler's fp32 copy would give


def test_every_bf16_value_in_one_row():
    # All 65536 bit patterns (NaNs, infinities, denormals, both zeros), shuffled, then with the NaNs
    # left out: the argmax of the bf16 row is torch's, and the fp32 copy's.
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    torch.manual_seed(0)
    row = every[torch.randperm(every.numel())]
    finite_or_inf = row[~torch.isnan(row)]
    for r in (row, finite_or_inf, finite_or_inf.flip(0)):
        logits = r[None].contiguous()
        want = logits.argmax(dim=-1)
        assert torch.equal(want, logits.float().argmax(dim=-1))
        assert torch.equal(_ext().argmax_rows(logits), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties_nan_infinities_and_zeros_follow_torchs_rule(dtype):
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
    logits = torch.stack(cases).to(dtype)
    want = logits.argmax(dim=-1)
    assert torch.equal(_ext().argmax_rows(logits), want)
    for row, expect in zip(logits, want):  # one row at a time too (no pool)
        assert _ext().argmax_rows(row[None]).item() == expect.item()


def test_strided_rows_and_what_the_kernel_refuses():
    base = torch.randn(8, 300)
    view = base[::2, 7:290]  # rows 600 floats apart, each contiguous
    assert torch.equal(_ext().argmax_rows(view), view.argmax(dim=-1))
    assert torch.equal(_ext().argmax_rows(view.bfloat16()[:, 1:]), view.bfloat16()[:, 1:].argmax(dim=-1))
    for bad in (base.double(), base.half(), base.t(), base[0], torch.empty(3, 0)):
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


def test_a_bf16_engine_takes_greedy_argmaxes_on_bf16_logits_and_copies_for_sampling(tiny_llama_dir, monkeypatch):
    # Greedy rows: the argmax reads lm_head's bf16 output and nothing copies it to fp32 (where the AMX
    # tiles run lm_head its kernel takes the argmax itself, test_cpu_linear_argmax.py, and this one is not
    # called). Sampled rows: the platform's fp32 copy (to_float) feeds the sampling. The greedy tokens
    # equal generate()'s.
    from transformers import AutoModelForCausalLM

    from npu_serve import LLM, SamplingParams

    seen, copies = [], []
    real_argmax, real_float = kernel.argmax, kernel.to_float
    monkeypatch.setattr(kernel, "argmax", lambda logits: seen.append(logits.dtype) or real_argmax(logits))
    monkeypatch.setattr(kernel, "to_float", lambda logits: copies.append(logits.dtype) or real_float(logits))
    llm = LLM(tiny_llama_dir, device="cpu", dtype="bfloat16")
    prompts = [[5, 6, 7], [8, 9]]
    out = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    fused = llm.engine.executor.fast is not None and linear.amx_available()
    assert (seen == [] if fused else seen and set(seen) == {torch.bfloat16}) and copies == []
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, torch_dtype=torch.bfloat16)
    for prompt, o in zip(prompts, out):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False, min_new_tokens=4)
        assert o.outputs[0].token_ids == ref[0, len(prompt):].tolist()
    seen.clear()
    llm.generate(prompts, SamplingParams(temperature=0.8, seed=1, max_tokens=2, ignore_eos=True))
    assert copies and set(copies) == {torch.bfloat16} and set(seen) == {torch.float32}
