"""The CPU bf16 GEMV kernel (kernels/npu_serve_kernels/linear/cpu_gemv.h) and the small-batch linears
that use it (npu_serve/worker/cpu_linear.py): same results as F.linear up to fp32 summation order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from npu_serve_kernels.linear import cpu as gemv

needs_kernel = pytest.mark.skipif(not gemv.available(), reason="no AVX512-BF16 on this CPU (or no compiler)")


def _bf16_close(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """y must be the fp32 product rounded to bf16, give or take one bf16 step (summation order)."""
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())
    step = ref.abs().clamp_min(1e-3) * 2.0**-7  # one bf16 ulp is at most 2^-7 of the value
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert ((y.float() - ref).abs() <= step + 1e-4).all(), (y.float() - ref).abs().max()


@needs_kernel
@pytest.mark.parametrize("m", range(1, gemv.MAX_ROWS + 1))
@pytest.mark.parametrize("n,k", [(576, 576), (7, 64), (193, 100), (130, 1536), (1, 31)])
def test_kernel_matches_fp32_linear(m, n, k):
    torch.manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k).bfloat16()
    w = (torch.randn(n, k) / k**0.5).bfloat16()
    b = torch.randn(n).bfloat16()
    _bf16_close(gemv.linear_bf16(x, w, b), x, w, b)
    _bf16_close(gemv.linear_bf16(x, w), x, w, None)


@needs_kernel
def test_kernel_reads_strided_rows_and_refuses_what_it_cannot_do():
    torch.manual_seed(0)
    w = torch.randn(40, 96).bfloat16()
    wide = torch.randn(3, 200).bfloat16()
    x = wide[:, 8:104]  # rows 200 apart, each contiguous
    _bf16_close(gemv.linear_bf16(x, w), x, w, None)
    with pytest.raises(RuntimeError, match="rows"):
        gemv.linear_bf16(torch.randn(gemv.MAX_ROWS + 1, 96).bfloat16(), w)
    with pytest.raises(RuntimeError, match="bf16"):
        gemv.linear_bf16(torch.randn(1, 96), w.float())
    with pytest.raises(RuntimeError):
        gemv.linear_bf16(torch.randn(1, 95).bfloat16(), w)  # K mismatch
    with pytest.raises(RuntimeError, match="contiguous"):
        gemv.linear_bf16(torch.randn(1, 96).bfloat16(), torch.randn(96, 40).bfloat16().t())


@needs_kernel
def test_install_routes_small_batches_to_the_kernel_and_the_rest_to_torch(monkeypatch):
    from npu_serve.worker import cpu_linear

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 32, bias=False)).bfloat16()
    fp32_model = torch.nn.Sequential(torch.nn.Linear(8, 8))  # not bf16: left alone
    assert cpu_linear.install(fp32_model, 4) == 0
    assert cpu_linear.install(model, 0) == 0  # off
    calls = []
    real = gemv.linear_bf16
    monkeypatch.setattr(gemv, "linear_bf16", lambda *a: calls.append(a[0].shape) or real(*a))
    assert cpu_linear.install(model, 4) == 2
    lin = model[0]
    with torch.inference_mode():
        small = torch.randn(1, 4, 64).bfloat16()  # 4 rows: the kernel
        _bf16_close(lin(small).view(4, 48), small.view(4, 64), lin.weight, lin.bias)
        big = torch.randn(5, 64).bfloat16()  # 5 rows: torch, bit for bit
        assert torch.equal(lin(big), F.linear(big, lin.weight, lin.bias))
        assert model(torch.randn(2, 64).bfloat16()).shape == (2, 32)
    assert calls == [(4, 64), (2, 64), (2, 48)]


def test_the_option_is_validated_and_has_a_flag():
    from npu_serve.cli import build_parser
    from npu_serve.config import EngineConfig
    from npu_serve.errors import InvalidParameter

    assert EngineConfig().cpu_gemv_rows == 32
    args = build_parser().parse_args(["serve", "--cpu-gemv-rows", "0"])
    assert EngineConfig.from_cli(args).cpu_gemv_rows == 0
    for bad in (-1, 33, True):
        with pytest.raises(InvalidParameter, match="cpu_gemv_rows"):
            EngineConfig(cpu_gemv_rows=bad)


@needs_kernel
def test_bf16_engine_with_the_kernel_tracks_the_engine_without_it(tiny_llama_dir):
    """Greedy bf16 tokens may part ways where two logits tie to within bf16 rounding; on this model
    and these prompts they do not, so both engines must agree (a wrong kernel would diverge at once).
    32 prompts: decode steps of 32 rows, the most the kernel takes; the first 3 alone: 3 rows."""
    from npu_serve import LLM, SamplingParams
    from npu_serve_kernels.linear import cpu as gemv

    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    rng = torch.Generator().manual_seed(0)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [100, 200, 300]]
    prompts += [torch.randint(3, 500, (int(n),), generator=rng).tolist()
                for n in torch.randint(1, 40, (gemv.MAX_ROWS - 3,), generator=rng)]
    outs = []
    for rows in (0, gemv.MAX_ROWS):
        llm = LLM(tiny_llama_dir, device="cpu", dtype="bfloat16", cpu_gemv_rows=rows)
        outs.append([[o.outputs[0].token_ids for o in llm.generate(p, params)] for p in (prompts[:3], prompts)])
    assert outs[0] == outs[1]


@needs_kernel
def test_helper_threads_change_no_bit_and_lose_no_chunk():
    """The pool (kernels/npu_serve_kernels/cpu_pool.h) only splits output rows, so any number of threads
    gives the one-thread bits; many back-to-back calls, from two Python threads at once, catch a chunk
    computed twice, skipped (torch.empty's garbage) or read after its task ended."""
    import threading

    torch.manual_seed(0)
    cases = [(torch.randn(m, 576).bfloat16(), (torch.randn(n, 576) / 24).bfloat16()) for m, n in
             [(1, 4096), (3, 577), (8, 192), (16, 1536), (32, 640)]]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = [gemv.linear_bf16(x, w) for x, w in cases]
        torch.set_num_threads(2)
        errors = []

        def hammer():
            for _ in range(150):
                for (x, w), ref in zip(cases, want):
                    if not torch.equal(gemv.linear_bf16(x, w), ref):
                        errors.append(tuple(x.shape) + tuple(w.shape))

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:5]
    finally:
        torch.set_num_threads(before)


@needs_kernel
def test_a_forked_child_gets_a_pool_of_its_own():
    """The child of a fork has none of the parent's helper threads (cpu_pool.h starts it a fresh pool):
    its kernels still split over helpers of its own and give the same bits, and it does not hang."""
    import multiprocessing as mp

    torch.manual_seed(1)
    x, w = torch.randn(4, 576).bfloat16(), (torch.randn(4096, 576) / 24).bfloat16()
    want = gemv.linear_bf16(x, w)  # the parent's pool is started and its helper asleep or spinning
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got, new_threads = pool.apply_async(_linear_in_child, (x, w)).get(timeout=60)
    assert torch.equal(got, want)
    assert new_threads >= 1, "the child's kernels ran without a helper thread of its own"


def _linear_in_child(x, w):
    import os

    torch.set_num_threads(2)
    before = len(os.listdir("/proc/self/task"))
    y = [gemv.linear_bf16(x, w) for _ in range(50)][-1]
    return y, len(os.listdir("/proc/self/task")) - before
