"""lm_head's argmax from the AMX tasks' epilogues (kernels/npu_serve_kernels/linear/cpu_gemm.h,
`linear_argmax`; the decoder's `Linear.with_argmax`): the linear's own bits, and torch.argmax of them in
every row (ties keep the first index, across tasks and within one; a NaN anywhere wins, the first one),
for decode batches, prefill sizes (K chunks, several panels, streamed outputs), widths that end inside a
task or a block, a bias; None where the AMX tiles do not run the linear; and a greedy engine takes it."""

from __future__ import annotations

import pytest
import torch
from npu_serve_kernels.decoder import cpu as decoder_kernels
from npu_serve_kernels.linear import cpu as gemv

from tests.worker.amx import amx, needs_tiles  # noqa: F401  (amx: a fixture)

pytestmark = needs_tiles


def _linear(w, bias=None):
    ext = decoder_kernels.module()
    return ext.Linear(w, bias, ext.PackedWeight(w), 1 << 20)


def _check(lin, x):
    y, ids = lin.with_argmax(x)
    assert torch.equal(y.view(torch.int16), lin(x).view(torch.int16))  # the linear's bits (NaNs too)
    assert ids is not None and ids.dtype == torch.long
    assert torch.equal(ids, y.reshape(-1, y.shape[-1]).argmax(dim=-1))
    return ids


@pytest.mark.parametrize("m", [1, 7, 32, 33, 300, 700])
@pytest.mark.parametrize("n,k", [(49152, 64), (1000, 576), (8, 1024), (4100, 96)])
def test_random_rows(amx, m, n, k):
    torch.manual_seed(m * 31 + n + k)
    w = (torch.randn(n, k) * 0.05).to(torch.bfloat16)
    x = torch.randn(m, k).to(torch.bfloat16)
    _check(_linear(w), x)


def test_with_a_bias(amx):
    torch.manual_seed(1)
    w = (torch.randn(999, 128) * 0.05).to(torch.bfloat16)
    bias = (torch.randn(999) * 4).to(torch.bfloat16)
    _check(_linear(w, bias), torch.randn(5, 128).to(torch.bfloat16))


def test_ties_keep_the_first_index(amx):
    # Rows 70 (the second task of 64 outputs), 5000 (a later task), 5001 (the same block of 16 as 5000) and
    # 5040 (the same task as 5000, its other pair of blocks) are one weight row, the largest output of every
    # input row: the answer is 70; without it 5000, then 5001, then 5040.
    torch.manual_seed(2)
    n, k = 6000, 64
    w = (torch.randn(n, k) * 0.01).to(torch.bfloat16)
    top = torch.ones(k, dtype=torch.bfloat16)
    for r in (70, 5000, 5001, 5040):
        w[r] = top
    x = torch.rand(9, k).add(0.5).to(torch.bfloat16)
    assert (_check(_linear(w), x) == 70).all()
    w[70] = w[71]
    assert (_check(_linear(w), x) == 5000).all()
    w[5000] = w[71]
    assert (_check(_linear(w), x) == 5001).all()
    w[5001] = w[71]
    assert (_check(_linear(w), x) == 5040).all()


def test_a_nan_wins_the_first_one(amx):
    torch.manual_seed(3)
    n, k = 3000, 64
    w = (torch.randn(n, k) * 0.05).to(torch.bfloat16)
    w[10] = 1.0  # the largest output, before both NaNs
    w[2047, 3] = float("nan")
    w[2900, 0] = float("nan")
    x = torch.rand(4, k).add(0.5).to(torch.bfloat16)
    assert (_check(_linear(w), x) == 2047).all()
    xn = x.clone()
    xn[2, 5] = float("nan")  # a NaN input: that row is NaN everywhere
    ids = _check(_linear(w), xn)
    assert ids.tolist() == [2047, 2047, 0, 2047]


def test_none_where_the_tiles_do_not_run(amx):
    w = torch.randn(64, 64).to(torch.bfloat16)
    fp32 = decoder_kernels.module().Linear(w.float(), None, None, 0)
    y, ids = fp32.with_argmax(torch.randn(3, 64))  # fp32: at::linear, not the kernel
    assert ids is None and y.dtype == torch.float32
    lin = _linear(w)
    gemv.set_variant("dot")
    y, ids = lin.with_argmax(torch.randn(3, 64).to(torch.bfloat16))
    assert ids is None and y.shape == (3, 64)


def test_a_greedy_engine_takes_lm_heads_argmax(amx, default_model_dir, monkeypatch):
    """Greedy rows get the argmax lm_head's kernel took; the platform's argmax is not called for them,
    and the tokens are generate()'s."""
    from transformers import AutoModelForCausalLM

    from npu_serve import LLM, SamplingParams

    llm = LLM(default_model_dir, dtype="bfloat16", num_kv_blocks=64)
    runner = llm.engine.executor
    assert runner.fast is not None
    calls = []
    real = runner.sampler._argmax
    monkeypatch.setattr(runner.sampler, "_argmax", lambda logits: calls.append(logits.shape) or real(logits))
    prompts = [[1, 504, 3458, 314, 2114], [1, 2683, 253, 1345]]
    out = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    assert calls == []
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.bfloat16)
    for prompt, o in zip(prompts, out):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, min_new_tokens=6)
        assert o.outputs[0].token_ids == ref[0, len(prompt):].tolist()
    # A row that samples takes the sampler's own path (the kernel's argmax is not what it needs).
    llm.generate(prompts[:1], SamplingParams(temperature=0.8, seed=1, max_tokens=2))
    assert calls
