"""The CPU bf16 linear kernel over packed weights (kernels/npu_serve_kernels/linear/cpu_gemm.h) and the
small-batch linears that use it (npu_serve/worker/cpu_linear.py): same results as F.linear up to fp32
summation order, and the same bits for a row whatever else is in its batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from npu_serve_kernels.linear import cpu as gemv

needs_kernel = pytest.mark.skipif(not gemv.available(), reason="no AVX512-BF16 on this CPU (or no compiler)")
# Every tile variant, each forced in turn; "amx" only where the CPU has AMX and Linux grants the tiles.
TILES = ["dot", "fma", pytest.param("amx", marks=pytest.mark.skipif(
    not (gemv.available() and gemv.amx_available()), reason="no AMX on this CPU (or the kernel cannot use it)"))]


@pytest.fixture
def tiles(request):
    """Forces the tile variant named by the test's `tiles` parameter, and restores the chosen one."""
    chosen = gemv.variant()
    gemv.set_variant(request.param)
    yield request.param
    gemv.set_variant(chosen)


def _bf16_close(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """y must be the fp32 product rounded to bf16, give or take one bf16 step (summation order)."""
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())
    step = ref.abs().clamp_min(1e-3) * 2.0**-7  # one bf16 ulp is at most 2^-7 of the value
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert ((y.float() - ref).abs() <= step + 1e-4).all(), (y.float() - ref).abs().max()


@needs_kernel
@pytest.mark.parametrize("tiles", TILES, indirect=True)
@pytest.mark.parametrize("m", [*range(1, 33), 41, 250])
@pytest.mark.parametrize("n,k", [(576, 576), (7, 64), (193, 100), (130, 1536), (1, 31)])
def test_kernel_matches_fp32_linear(m, n, k, tiles):
    """(With the AMX tiles forced, K = 100 and 31 run on the faster AVX512 tiles: AMX takes K in 32s.)"""
    torch.manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k).bfloat16()
    w = (torch.randn(n, k) / k**0.5).bfloat16()
    b = torch.randn(n).bfloat16()
    packed = gemv.pack(w)
    assert (packed.out_features, packed.in_features) == (n, k)
    _bf16_close(packed(x, b), x, w, b)
    _bf16_close(packed(x), x, w, None)


@needs_kernel
@pytest.mark.parametrize("tiles", TILES, indirect=True)
@pytest.mark.parametrize("n,k", [(576, 576), (193, 101), (1536, 576), (40, 1536)])
def test_a_rows_result_does_not_depend_on_its_batch(n, k, tiles):
    """Each output's sums run in one order whatever the row count (row blocks, panels and the AMX tiles'
    K chunks only share weight loads), so a request's logits are the same bits alone or among 31 others,
    and in a prefill chunk."""
    torch.manual_seed(n + k)
    # 300 rows: more than one panel of x (cpu_gemm.h) at K = 1536, and K chunks for the AMX tiles from 256
    # rows a panel (amx_k_chunk), against slices of 1-150 rows that take K whole.
    x = torch.randn(300, k).bfloat16()
    packed = gemv.pack((torch.randn(n, k) / k**0.5).bfloat16())
    whole = packed(x)
    for lo, hi in [(0, 1), (5, 6), (3, 11), (0, 32), (17, 80), (150, 300)]:
        assert torch.equal(packed(x[lo:hi]), whole[lo:hi]), (lo, hi)


@needs_kernel
@pytest.mark.parametrize("tiles", TILES, indirect=True)
@pytest.mark.parametrize("m", [1, 7, 32, 100, 300])
def test_linears_of_one_input_in_one_call_give_each_ones_bits(m, tiles):
    """linear_many (q/k/v, gate/up in one task list on the AMX tiles) returns, for each weight, exactly
    what that weight's own call returns, biases included; two or three weights, narrow and wide."""
    torch.manual_seed(m)
    k = 576
    x = torch.randn(m, k).bfloat16()
    shapes = [(576, True), (192, True), (193, False)]  # 193: a last block of one output
    weights = [gemv.pack((torch.randn(n, k) / k**0.5).bfloat16()) for n, _ in shapes]
    biases = [torch.randn(n).bfloat16() if with_bias else None for n, with_bias in shapes]
    for count in (2, 3):
        got = gemv.linear_many(x, weights[:count], biases[:count])
        assert len(got) == count
        for y, w, b in zip(got, weights, biases):
            assert torch.equal(y, w(x, b))


@needs_kernel
def test_linear_many_refuses_what_one_call_would():
    x = torch.randn(4, 64).bfloat16()
    w64, w32 = gemv.pack(torch.randn(8, 64).bfloat16()), gemv.pack(torch.randn(8, 32).bfloat16())
    with pytest.raises(RuntimeError, match="1 to 3 weights"):
        gemv.linear_many(x, [], [])
    with pytest.raises(RuntimeError, match="1 to 3 weights"):
        gemv.linear_many(x, [w64] * 4, [None] * 4)
    with pytest.raises(RuntimeError, match="1 to 3 weights"):
        gemv.linear_many(x, [w64, w64], [None])
    with pytest.raises(RuntimeError, match="inputs"):
        gemv.linear_many(x, [w64, w32], [None, None])
    with pytest.raises(RuntimeError, match="bias"):
        gemv.linear_many(x, [w64], [torch.randn(7).bfloat16()])


@needs_kernel
@pytest.mark.parametrize("n,k", [(576, 576), (193, 101), (64, 1536), (7, 3)])
def test_both_tile_variants_give_the_same_bits(n, k):
    """The FMA tiles follow VDPBF16PS's definition (odd product, then even, denormals as zero), so the
    variant timed fastest on a CPU never changes a result; tiny and huge values cross the denormal
    rule both ways."""
    torch.manual_seed(n * k)
    chosen = gemv.variant()
    x = torch.randn(45, k).bfloat16()
    x[0, : min(k, 4)] = torch.tensor([1e-39, -3e-39, 1e-30, 1e30])[: min(k, 4)].bfloat16()
    x[1] = 1e-20  # times w's row 0: products of 1e-40, below fp32's normal range (flushed by both)
    w = (torch.randn(n, k) / k**0.5).bfloat16()
    w[0] = 1e-20
    b = torch.randn(n).bfloat16()
    packed = gemv.pack(w)
    try:
        got = {}
        for name in ("dot", "fma"):
            gemv.set_variant(name)
            got[name] = (packed(x, b), packed(x))
    finally:
        gemv.set_variant(chosen)
    assert torch.equal(got["dot"][0], got["fma"][0]) and torch.equal(got["dot"][1], got["fma"][1])
    assert got["dot"][1][1, 0] == 0  # VDPBF16PS flushes the denormal sum; so must the FMA tiles
    _bf16_close(got["dot"][0][2:], x[2:], w, b)
    with pytest.raises(RuntimeError, match="'dot', 'fma' or 'amx'"):
        gemv.set_variant("avx")
    if not gemv.amx_available():
        with pytest.raises(RuntimeError, match="no AMX"):
            gemv.set_variant("amx")
        assert gemv.variant() == chosen


@needs_kernel
@pytest.mark.parametrize("tiles", TILES[2:], indirect=True)
@pytest.mark.parametrize("n,k", [(576, 576), (48, 64), (200, 1536)])
def test_amx_tiles_flush_denormals_and_round_like_the_others(n, k, tiles):
    """TDPBF16PS sums in its own order, but with VDPBF16PS's rules: denormal inputs and sums are
    zero, one rounding to bf16 at the end; its results stay within the fp32-sum bound."""
    torch.manual_seed(n + k)
    x = torch.randn(40, k).bfloat16()
    x[0, :4] = torch.tensor([1e-39, -3e-39, 1e-30, 1e30]).bfloat16()
    x[1] = 1e-20
    w = (torch.randn(n, k) / k**0.5).bfloat16()
    w[0] = 1e-20
    b = torch.randn(n).bfloat16()
    y = gemv.pack(w)(x, b)
    assert gemv.pack(w)(x)[1, 0] == 0  # 1e-40 products: below fp32's normal range, flushed
    _bf16_close(y[2:], x[2:], w, b)
    gemv.set_variant("fma")
    # A different order of fp32 sums: at most a bf16 step apart, and never far.
    other = gemv.pack(w)(x, b)
    assert ((y[2:].float() - other[2:].float()).abs() <= other[2:].float().abs() * 2.0**-7 + 1e-3).all()


@needs_kernel
def test_kernel_reads_strided_rows_and_refuses_what_it_cannot_do():
    torch.manual_seed(0)
    w = torch.randn(40, 96).bfloat16()
    packed = gemv.pack(w)
    wide = torch.randn(3, 200).bfloat16()
    x = wide[:, 8:104]  # rows 200 apart, each contiguous
    _bf16_close(packed(x), x, w, None)
    assert packed(torch.randn(0, 96).bfloat16()).shape == (0, 40)
    with pytest.raises(RuntimeError, match="bf16"):
        packed(torch.randn(1, 96))
    with pytest.raises(RuntimeError, match="bf16"):
        gemv.pack(w.float())
    with pytest.raises(RuntimeError, match="K = 95"):
        packed(torch.randn(1, 95).bfloat16())  # K mismatch
    with pytest.raises(RuntimeError, match="contiguous rows"):
        packed(torch.randn(96, 2).bfloat16().t())
    with pytest.raises(RuntimeError, match="bias"):
        packed(torch.randn(1, 96).bfloat16(), torch.randn(41).bfloat16())


@needs_kernel
def test_install_routes_small_batches_to_the_kernel_and_the_rest_to_torch(monkeypatch):
    from npu_serve.worker import cpu_linear

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 32, bias=False)).bfloat16()
    fp32_model = torch.nn.Sequential(torch.nn.Linear(8, 8))  # not bf16: left alone
    assert cpu_linear.install(fp32_model, 4) == 0
    assert cpu_linear.install(model, 0) == 0  # off
    calls = []
    real_pack = gemv.pack

    class CountingPack:
        def __init__(self, weight):
            self.packed = real_pack(weight)
            self.data = self.packed.data

        def __call__(self, x, bias):
            calls.append(x.shape)
            return self.packed(x, bias)

    monkeypatch.setattr(gemv, "pack", CountingPack)
    assert cpu_linear.install(model, 4) == 2
    lin = model[0]
    with torch.inference_mode():
        small = torch.randn(1, 4, 64).bfloat16()  # 4 rows: the kernel
        _bf16_close(lin(small).view(4, 48), small.view(4, 64), lin.weight, lin.bias)
        big = torch.randn(5, 64).bfloat16()  # 5 rows: torch, bit for bit
        assert torch.equal(lin(big), F.linear(big, lin.weight, lin.bias))
        assert model(torch.randn(2, 64).bfloat16()).shape == (2, 32)
    assert calls == [(4, 64), (2, 64), (2, 48)]
    calls.clear()
    wide = torch.nn.Sequential(torch.nn.Linear(64, 48)).bfloat16()
    assert cpu_linear.install(wide, None) == 1
    with torch.inference_mode():
        x = torch.randn(300, 64).bfloat16()
        y = wide(x)
    if gemv.has_amx() and gemv.variant() != "amx":  # decode batches only: oneDNN's AMX takes the rest
        assert calls == [] and torch.equal(y, F.linear(x, wide[0].weight, wide[0].bias))
    else:
        assert calls == [(300, 64)]
        _bf16_close(y, x, wide[0].weight, wide[0].bias)


def test_the_option_is_validated_and_has_a_flag():
    from npu_serve.cli import build_parser
    from npu_serve.config import EngineConfig
    from npu_serve.errors import InvalidParameter

    assert EngineConfig().cpu_gemv_rows is None
    args = build_parser().parse_args(["serve", "--cpu-gemv-rows", "0"])
    assert EngineConfig.from_cli(args).cpu_gemv_rows == 0
    assert EngineConfig.from_cli(build_parser().parse_args(["serve"])).cpu_gemv_rows is None
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidParameter, match="cpu_gemv_rows"):
            EngineConfig(cpu_gemv_rows=bad)


@needs_kernel
def test_bf16_engine_with_the_kernel_tracks_the_engine_without_it(tiny_llama_dir):
    """Greedy bf16 tokens may part ways where two logits tie to within bf16 rounding; on this model
    and these prompts they do not, so both engines must agree (a wrong kernel would diverge at once).
    32 prompts: decode steps of 32 rows; the first 3 alone: 3 rows; prefill chunks of up to ~600."""
    from npu_serve import LLM, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    rng = torch.Generator().manual_seed(0)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [100, 200, 300]]
    prompts += [torch.randint(3, 500, (int(n),), generator=rng).tolist()
                for n in torch.randint(1, 40, (29,), generator=rng)]
    outs = []
    for rows in (0, None):  # None: the default (every size; decode batches where AMX is oneDNN's only)
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
        cases = [(x, gemv.pack(w)) for x, w in cases]
        want = [w(x) for x, w in cases]
        torch.set_num_threads(2)
        errors = []

        def hammer():
            for _ in range(150):
                for (x, w), ref in zip(cases, want):
                    if not torch.equal(w(x), ref):
                        errors.append(tuple(x.shape) + (w.out_features,))

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
    want = gemv.pack(w)(x)  # the parent's pool is started and its helper asleep or spinning
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got, new_threads = pool.apply_async(_linear_in_child, (x, w)).get(timeout=60)
    assert torch.equal(got, want)
    assert new_threads >= 1, "the child's kernels ran without a helper thread of its own"


def _linear_in_child(x, w):
    import os

    torch.set_num_threads(2)
    before = len(os.listdir("/proc/self/task"))
    packed = gemv.pack(w)
    y = [packed(x) for _ in range(50)][-1]
    return y, len(os.listdir("/proc/self/task")) - before
