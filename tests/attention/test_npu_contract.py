"""NpuAttentionBackend's torch_npu calls, checked on CPU: torch_npu is replaced (here only) by a
recording fake, and we check op names, argument names, dtypes (int32 metadata), layouts, the host
length lists, and the answer against the torch reference."""

from __future__ import annotations

import pytest
import torch

import npu_serve.attention.npu as npu_backend
from npu_serve.attention.npu import NpuAttentionBackend
from npu_serve_kernels.paged_attention.reference import paged_attention_ref
from npu_serve_kernels.reshape_and_cache.reference import reshape_and_cache_ref
from tests.attention.fake_torch_npu import FakeTorchNpu
from tests.attention.paged_cases import make_case

DTYPE = torch.bfloat16
WRITE_ARGS = {"key", "value", "key_cache", "value_cache"}


@pytest.fixture
def fake(monkeypatch):
    fake = FakeTorchNpu()
    monkeypatch.setattr(npu_backend, "import_torch_npu", lambda: fake)
    return fake


def _run(case, write_op="scatter"):
    kv_cache = case.kv_cache.clone()
    out = NpuAttentionBackend(write_op).forward(case.query, case.key, case.value, kv_cache, case.meta, case.layer)
    expected_cache = case.kv_cache.clone()
    reshape_and_cache_ref(case.key, case.value, expected_cache, case.meta.slot_mapping)
    m = case.meta
    expected = paged_attention_ref(case.query, expected_cache, m.block_tables, m.query_start_loc_cpu,
                                   m.seq_lens_cpu, case.scale)
    assert torch.equal(kv_cache, expected_cache)
    torch.testing.assert_close(out, expected, atol=3e-2, rtol=3e-2)
    assert out.shape == case.query.shape and out.dtype == case.query.dtype
    return kv_cache


def _mixed_case():
    # two decodes, a chunk after 150 cached tokens, a fresh prefill; GQA 8 over 2; block size 128
    return make_case([1, 1, 30, 7], [5, 200, 180, 7], 2, 8, 2, 64, 128, DTYPE, seed=3, device="cpu")


def _check_write(call, case, kv_cache, slot_arg):
    assert set(call.kwargs) >= WRITE_ARGS | {slot_arg}
    slots = call.kwargs[slot_arg]
    assert slots.dtype == torch.int32 and slots.tolist() == case.meta.slot_mapping.tolist()
    assert call.kwargs["key"].shape == case.key.shape and call.kwargs["key"].is_contiguous()
    # the caches are views of the layer's tensor, [num_blocks, block_size, Hkv, D] (ND, "Norm")
    assert call.kwargs["key_cache"].data_ptr() == kv_cache[0].data_ptr()
    assert call.kwargs["value_cache"].data_ptr() == kv_cache[1].data_ptr()
    assert call.kwargs["key_cache"].shape == kv_cache.shape[1:]


def test_mixed_batch_scatters_then_runs_fia_in_tnd_with_the_2048_mask(fake):
    case = _mixed_case()
    kv_cache = _run(case)
    assert [c.name for c in fake.calls] == ["npu_scatter_pa_kv_cache", "npu_fused_infer_attention_score"]
    write, fia = fake.calls
    assert write.kwargs["cache_mode"] == "Norm"
    _check_write(write, case, kv_cache, "slot_mapping")

    kw = fia.kwargs
    assert set(kw) == {"query", "key", "value", "atten_mask", "block_table", "input_layout", "block_size",
                       "actual_seq_lengths", "actual_seq_lengths_kv", "num_key_value_heads", "num_heads",
                       "scale", "sparse_mode"}
    assert kw["input_layout"] == "TND" and kw["sparse_mode"] == 3 and kw["block_size"] == 128
    assert kw["query"].shape == (39, 8, 64)
    assert kw["key"].shape == kw["value"].shape == (case.kv_cache.shape[1], 128, 2 * 64)
    assert kw["key"].data_ptr() == kv_cache[0].data_ptr()
    assert kw["num_heads"] == 8 and kw["num_key_value_heads"] == 2 and kw["scale"] == case.scale
    assert kw["block_table"].dtype == torch.int32
    assert torch.equal(kw["block_table"], case.meta.block_tables)
    # host lists: cumulative query ends (TND) and per-request KV lengths
    assert kw["actual_seq_lengths"] == [1, 2, 32, 39]
    assert kw["actual_seq_lengths_kv"] == [5, 200, 180, 7]
    assert all(type(x) is int for x in kw["actual_seq_lengths"] + kw["actual_seq_lengths_kv"])
    mask = kw["atten_mask"]
    assert mask.shape == (2048, 2048) and mask.dtype == torch.int8
    assert torch.equal(mask, torch.triu(torch.ones(2048, 2048, dtype=torch.int8), diagonal=1))


def test_pure_decode_uses_atb_paged_attention_with_host_int32_lengths(fake):
    case = make_case([1, 1, 1], [1, 129, 300], 3, 4, 1, 128, 128, DTYPE, seed=4, device="cpu")
    kv_cache = _run(case)
    assert [c.name for c in fake.calls] == ["npu_scatter_pa_kv_cache", "_npu_paged_attention"]
    _check_write(fake.calls[0], case, kv_cache, "slot_mapping")
    kw = fake.calls[1].kwargs
    assert set(kw) == {"query", "key_cache", "value_cache", "num_kv_heads", "num_heads", "scale_value",
                       "block_table", "context_lens", "out"}
    assert kw["num_kv_heads"] == 1 and kw["num_heads"] == 4
    assert kw["key_cache"].shape == (case.kv_cache.shape[1], 128, 1, 128)
    assert kw["block_table"].dtype == torch.int32
    lens = kw["context_lens"]
    assert lens.dtype == torch.int32 and lens.device.type == "cpu" and lens.tolist() == [1, 129, 300]
    assert kw["out"].shape == case.query.shape


def test_atb_write_op(fake):
    case = _mixed_case()
    kv_cache = _run(case, write_op="atb")
    assert [c.name for c in fake.calls] == ["_npu_reshape_and_cache", "npu_fused_infer_attention_score"]
    _check_write(fake.calls[0], case, kv_cache, "slot_indices")


def test_rejects_float32_and_small_blocks_before_calling_the_device(fake):
    case = make_case([4], [4], 0, 2, 2, 64, 128, torch.float32, device="cpu")
    with pytest.raises(ValueError, match="float16/bfloat16"):
        NpuAttentionBackend().forward(case.query, case.key, case.value, case.kv_cache, case.meta, case.layer)
    assert fake.calls == []
    case = make_case([4], [20], 0, 2, 2, 64, 16, DTYPE, device="cpu")
    with pytest.raises(ValueError, match="multiple of 128"):
        NpuAttentionBackend().forward(case.query, case.key, case.value, case.kv_cache, case.meta, case.layer)
    assert [c.name for c in fake.calls] == ["npu_scatter_pa_kv_cache"]


def test_missing_torch_npu_is_a_clear_error():
    case = make_case([1], [3], 1, 2, 2, 64, 128, DTYPE, device="cpu")
    from npu_serve.errors import DeviceUnavailable

    with pytest.raises(DeviceUnavailable, match="torch-npu is not installed"):
        NpuAttentionBackend().forward(case.query, case.key, case.value, case.kv_cache, case.meta, case.layer)
