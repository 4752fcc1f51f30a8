"""The fake torch_npu must say no where the real op does (ascend-notes item 12): a recording fake that
accepts anything let a CANN-9-only kwarg, an unsupported head size and an over-limit decode pass the
contract tests. Each case breaks one documented rule and expects the fake to refuse it."""

from __future__ import annotations

import pytest
import torch

from tests.attention.fake_torch_npu import PROFILES, FakeOpError, FakeTorchNpu

D, BS = 64, 128


def _fia_args(head_dim=D, heads=4, kv_heads=1, block_size=BS, num_blocks=4, q_lens=(1, 3), kv_lens=(10, 140),
              dtype=torch.bfloat16):
    t = sum(q_lens)
    cache = torch.zeros(num_blocks, block_size, kv_heads * head_dim, dtype=dtype)
    q_ends = [sum(q_lens[: i + 1]) for i in range(len(q_lens))]
    return dict(query=torch.zeros(t, heads, head_dim, dtype=dtype), key=cache, value=cache.clone(),
                atten_mask=torch.triu(torch.ones(2048, 2048), diagonal=1).to(torch.int8),
                block_table=torch.tensor([[1, 0], [2, 3]], dtype=torch.int32), input_layout="TND",
                block_size=block_size, actual_seq_lengths=q_ends, actual_seq_lengths_kv=list(kv_lens),
                num_key_value_heads=kv_heads, num_heads=heads, scale=head_dim**-0.5, sparse_mode=3)


def _write_args(slot_dtype=torch.int32, dtype=torch.bfloat16):
    return dict(key=torch.zeros(2, 1, D, dtype=dtype), value=torch.zeros(2, 1, D, dtype=dtype),
                key_cache=torch.zeros(4, BS, 1, D, dtype=dtype), value_cache=torch.zeros(4, BS, 1, D, dtype=dtype))


def _pa_args(block_size=BS, head_dim=D, lens_device_dtype=torch.int32):
    q = torch.zeros(2, 4, head_dim, dtype=torch.bfloat16)
    cache = torch.zeros(4, block_size, 1, head_dim, dtype=torch.bfloat16)
    return dict(query=q, key_cache=cache, value_cache=cache.clone(), num_kv_heads=1, num_heads=4, scale_value=0.1,
                block_table=torch.tensor([[1], [2]], dtype=torch.int32),
                context_lens=torch.tensor([3, 5], dtype=lens_device_dtype), out=torch.empty_like(q))


def _changed(args: dict, **changes) -> dict:
    return {**args, **changes}


FIA_VIOLATIONS = {
    "head size 96 in TND": (_fia_args(head_dim=96), "561002"),
    "int64 block table": (_changed(_fia_args(), block_table=torch.tensor([[1, 0], [2, 3]])), "int32"),
    "lengths as a tensor": (_changed(_fia_args(), actual_seq_lengths=torch.tensor([1, 4])), "host list"),
    "lengths per request, not cumulative": (_changed(_fia_args(), actual_seq_lengths=[1, 3]), "cumulative"),
    "one KV length too few": (_changed(_fia_args(), actual_seq_lengths_kv=[10]), "block_table rows"),
    "non-contiguous query": (_changed(_fia_args(), query=torch.zeros(4, 64, 4, dtype=torch.bfloat16).transpose(1, 2)),
                             "non-contiguous"),
    "float32": (_fia_args(dtype=torch.float32), "float16/bfloat16"),
    "block size 64": (_fia_args(block_size=64), "block_size must be 128..512"),
    "pool smaller than the blocks named": (_fia_args(num_blocks=2, kv_lens=(10, 140)), "blocknum 2"),
    "a full-size bool mask": (_changed(_fia_args(), atten_mask=torch.ones(2048, 2048, dtype=torch.bool).tril()),
                              "compressed causal mask"),
    "no mask with sparse_mode 3": (_changed(_fia_args(), atten_mask=None), "2048, 2048"),
    "300 query heads": (_fia_args(heads=300, kv_heads=3), "N <= 256"),
    "GQA group of 128": (_fia_args(heads=128, kv_heads=1), "ratio <= 64"),
}


@pytest.mark.parametrize("name", list(FIA_VIOLATIONS))
def test_fia_refuses_what_the_docs_forbid(name):
    args, message = FIA_VIOLATIONS[name]
    with pytest.raises(FakeOpError, match=message):
        FakeTorchNpu(PROFILES["cann8.5"]).npu_fused_infer_attention_score(**args)


def test_fia_accepts_the_documented_call():
    out, _ = FakeTorchNpu(PROFILES["cann8.5"]).npu_fused_infer_attention_score(**_fia_args())
    assert out.shape == (4, 4, D)


def test_fia_paged_tnd_is_missing_before_cann_8_3():
    with pytest.raises(FakeOpError, match="no TND paged path"):
        FakeTorchNpu(PROFILES["cann8.2"]).npu_fused_infer_attention_score(**_fia_args())


def test_scatter_op_per_stack():
    slots = torch.tensor([1, 2], dtype=torch.int32)
    with pytest.raises(TypeError, match="cache_mode"):  # CANN 8.5's schema has no such keyword
        FakeTorchNpu(PROFILES["cann8.5"]).npu_scatter_pa_kv_cache(**_write_args(), slot_mapping=slots, cache_mode="Norm")
    with pytest.raises(FakeOpError, match="NZ cache layout only"):
        FakeTorchNpu(PROFILES["cann8.5"]).npu_scatter_pa_kv_cache(**_write_args(), slot_mapping=slots)
    with pytest.raises(FakeOpError, match="PA_NZ"):  # CANN 9.1's default mode is NZ too
        FakeTorchNpu(PROFILES["cann9.1"]).npu_scatter_pa_kv_cache(**_write_args(), slot_mapping=slots)
    assert not hasattr(FakeTorchNpu(PROFILES["cann8.2"]), "npu_scatter_pa_kv_cache")
    FakeTorchNpu(PROFILES["cann9.1"]).npu_scatter_pa_kv_cache(**_write_args(), slot_mapping=slots, cache_mode="Norm")


def test_atb_write_refuses_int64_slots_duplicates_and_missing_nnal():
    fake = FakeTorchNpu(PROFILES["cann8.5"])
    with pytest.raises(FakeOpError, match="int32"):
        fake._npu_reshape_and_cache(**_write_args(), slot_indices=torch.tensor([1, 2]))
    with pytest.raises(FakeOpError, match="unique"):
        fake._npu_reshape_and_cache(**_write_args(), slot_indices=torch.tensor([1, 1], dtype=torch.int32))
    with pytest.raises(OSError, match="nnal"):
        FakeTorchNpu(PROFILES["cann8.5"].but(nnal=False))._npu_reshape_and_cache(
            **_write_args(), slot_indices=torch.tensor([1, 2], dtype=torch.int32))


@pytest.mark.parametrize("block_size, head_dim", [(128, 192), (256, 128), (24, 64)])
def test_atb_paged_attention_limit(block_size, head_dim):
    with pytest.raises(FakeOpError, match="128 x 128"):
        FakeTorchNpu(PROFILES["cann8.5"])._npu_paged_attention(**_pa_args(block_size, head_dim))


def test_atb_paged_attention_wants_int32_lengths():
    with pytest.raises(FakeOpError, match="int32 tensor on the host"):
        FakeTorchNpu(PROFILES["cann8.5"])._npu_paged_attention(**_pa_args(lens_device_dtype=torch.int64))
    FakeTorchNpu(PROFILES["cann8.5"])._npu_paged_attention(**_pa_args())
