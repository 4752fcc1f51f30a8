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
