"""Triton kernels against the torch references (under TRITON_INTERPRET=1 on CPU; for real on CUDA
with NPU_SERVE_TEST_DEVICE=cuda). Shapes stay small: the interpreter runs each program in numpy."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from npu_serve_kernels.paged_attention import triton_kernels as attention  # noqa: E402
from npu_serve_kernels.paged_attention.reference import paged_attention_ref  # noqa: E402
from npu_serve_kernels.reshape_and_cache import triton_kernels as cache_kernels  # noqa: E402
from npu_serve_kernels.reshape_and_cache.reference import reshape_and_cache_ref  # noqa: E402
from tests.attention.paged_cases import make_case, random_case, tolerance  # noqa: E402

# (dtype, block_size, head_dim, num_heads, num_kv_heads)
SHAPES = [
    (torch.float32, 16, 64, 4, 2),
    (torch.float32, 128, 128, 8, 2),
    (torch.bfloat16, 16, 128, 4, 1),
    (torch.bfloat16, 128, 64, 2, 2),
    (torch.float32, 16, 16, 4, 2),  # the tiny test models' head_dim (padded to the 16-wide dot)
    (torch.float32, 16, 64, 9, 3),  # SmolLM2-135M's heads: 3 query heads per KV head, none a power of 2
]


def _ids(shape):
    dtype, bs, d, h, hkv = shape
    return f"{str(dtype)[6:]}-bs{bs}-d{d}-h{h}kv{hkv}"


def _filled(case):
    """The cache after the reference write, and the reference attention over it."""
    expected_cache = case.kv_cache.clone()
    reshape_and_cache_ref(case.key, case.value, expected_cache, case.meta.slot_mapping)
    m = case.meta
    expected = paged_attention_ref(case.query, expected_cache, m.block_tables, m.query_start_loc_cpu,
                                   m.seq_lens_cpu, case.scale)
    return expected_cache, expected


@pytest.mark.parametrize("block_size", [16, 128])
def test_reshape_and_cache_writes_the_reference_slots_and_skips_negative(block_size):
    case = make_case([1, 5], [9, 140], 1, 2, 2, 64, block_size, torch.float32)
    slots = case.meta.slot_mapping.clone()
    slots[2] = -1  # a padding token: must not be written anywhere
    expected = case.kv_cache.clone()
    reshape_and_cache_ref(case.key, case.value, expected, slots)
    got = case.kv_cache.clone()
    cache_kernels.reshape_and_cache(case.key, case.value, got, slots)
    assert torch.equal(got, expected)
    assert not torch.equal(got, case.kv_cache)  # something was written


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_decode_kernel_matches_reference(shape):
    dtype, bs, d, h, hkv = shape
    seq_lens = [1, bs - 1, bs + 1, 2 * bs + 7]
    case = make_case([1] * 4, seq_lens, 4, h, hkv, d, bs, dtype, seed=1)
    filled, expected = _filled(case)
    out = torch.full_like(case.query, float("nan"))
    m = case.meta
    attention.paged_decode(out, case.query, filled, m.block_tables, m.seq_lens, case.scale)
    torch.testing.assert_close(out, expected, **tolerance(dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_prefill_kernel_matches_reference_with_cached_context(shape):
    dtype, bs, d, h, hkv = shape
    # a chunk after bs+3 cached tokens, a fresh prefill, and a one-token chunk (not a decode)
    q_lens, seq_lens = [20, 17, 1], [bs + 23, 17, 40]
    case = make_case(q_lens, seq_lens, 0, h, hkv, d, bs, dtype, seed=2)
    filled, expected = _filled(case)
    out = torch.full_like(case.query, float("nan"))
    m = case.meta
    attention.paged_prefill(out, case.query, filled, m.block_tables, m.seq_lens, m.query_start_loc,
                            case.scale, first_req=0, num_reqs=3, max_query_len=20)
    torch.testing.assert_close(out, expected, **tolerance(dtype))


@pytest.mark.parametrize("seed", range(4))
def test_backend_on_random_mixed_batches(seed):
    """Decodes + a chunk with context + a fresh prefill, through TritonAttentionBackend.forward:
    the cache must hold the reference writes and the output match both references."""
    from npu_serve.attention.torch_ref import TorchAttentionBackend
    from npu_serve.attention.triton import TritonAttentionBackend

    dtype = torch.float32 if seed % 2 == 0 else torch.bfloat16
    block_size, head_dim = (16, 64) if seed < 2 else (128, 128)
    case = random_case(seed, block_size, head_dim, dtype, max_len=3 * block_size)
    expected_cache, expected = _filled(case)
    kv_cache = case.kv_cache.clone()
    out = TritonAttentionBackend().forward(case.query, case.key, case.value, kv_cache, case.meta, case.layer)
    assert torch.equal(kv_cache, expected_cache)
    torch.testing.assert_close(out, expected, **tolerance(dtype))

    torch_cache = case.kv_cache.clone()
    torch_out = TorchAttentionBackend().forward(case.query, case.key, case.value, torch_cache, case.meta,
                                                case.layer)
    torch.testing.assert_close(out, torch_out, **tolerance(dtype))


@pytest.mark.parametrize("seed,window,softcap,sinks,head_dim,v_head_dim", [
    (10, 7, None, False, 64, 64),  # a window shorter than a block, in decodes and chunks
    (11, 20, 2.0, False, 32, 32),  # window across blocks, softcapped
    (12, None, 1.5, True, 64, 64),
    (13, 5, None, True, 24, 12),  # MLA-like value size, window and sinks
    (14, None, None, False, 24, 12),
])
def test_backend_window_softcap_sinks_and_value_sizes(seed, window, softcap, sinks, head_dim, v_head_dim):
    """TritonAttentionBackend.forward on a random mixed batch of a featured layer, against the plain
    reference: the cache writes exactly, the output to float32 tolerance, and the feature matters."""
    from npu_serve.attention.triton import TritonAttentionBackend
    from tests.attention.paged_cases import caches_equal, clone_cache

    case = random_case(seed, 16, head_dim, torch.float32, max_len=56, v_head_dim=v_head_dim)
    case.scale *= 3.0
    case = case.with_features(window, softcap, sinks, seed)
    expected_cache = clone_cache(case.kv_cache)
    reshape_and_cache_ref(case.key, case.value, expected_cache, case.meta.slot_mapping)
    m = case.meta
    expected = paged_attention_ref(case.query, expected_cache, m.block_tables, m.query_start_loc_cpu, m.seq_lens_cpu,
                                   case.scale, window, softcap, case.sinks)
    kv_cache = clone_cache(case.kv_cache)
    backend = TritonAttentionBackend()
    assert backend.unsupported(case.layer) is None
    kwargs = {"sinks": case.sinks} if sinks else {}
    out = backend.forward(case.query, case.key, case.value, kv_cache, case.meta, case.layer, **kwargs)
    assert caches_equal(kv_cache, expected_cache)
    torch.testing.assert_close(out, expected, **tolerance(torch.float32))
    if window or softcap or sinks:
        plain = paged_attention_ref(case.query, expected_cache, m.block_tables, m.query_start_loc_cpu, m.seq_lens_cpu,
                                    case.scale)
        assert (plain - expected).abs().max() > 0.05


def test_prefill_rows_whose_window_starts_past_a_key_tile(monkeypatch):
    """With 32 query rows per tile and 16 keys per tile (a GPU runs 64 x 32), a window of 3 leaves
    the late rows of a tile without a single visible key in its first key tiles: the online softmax
    must skip those tiles for them, not turn them into NaN."""
    monkeypatch.setattr(attention, "_INTERPRET_PREFILL_TILES", (32, 16))
    case = make_case([40, 33], [40, 70], 0, 2, 1, 16, 16, torch.float32, seed=4).with_features(window=3)
    filled = case.kv_cache.clone()
    reshape_and_cache_ref(case.key, case.value, filled, case.meta.slot_mapping)
    m = case.meta
    out = torch.full_like(case.query, float("nan"))
    attention.paged_prefill(out, case.query, filled, m.block_tables, m.seq_lens, m.query_start_loc, case.scale,
                            first_req=0, num_reqs=2, max_query_len=40, window=3)
    expected = paged_attention_ref(case.query, filled, m.block_tables, m.query_start_loc_cpu, m.seq_lens_cpu,
                                   case.scale, window=3)
    torch.testing.assert_close(out, expected, **tolerance(torch.float32))
