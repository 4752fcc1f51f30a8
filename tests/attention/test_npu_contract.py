"""NpuAttentionBackend's torch_npu calls, checked on CPU under every software stack the fake models.

The fake torch_npu (tests/attention/fake_torch_npu.py) is installed as `torch_npu`, the NPU platform is
started on it (stack probe, refusals), and the backend runs as the engine runs it. Each test checks the
op names and arguments (int32 metadata, layouts, host length lists) and the answer against an
independent float64 reference. The fake refuses what the real op refuses on that stack, so a call that
only works on CANN 9 fails under the CANN 8.5 profile, as it would on a 910B.
"""

from __future__ import annotations

import pytest
import torch

from npu_serve.attention.backend import AttentionMetadata
from npu_serve.attention.npu import NpuAttentionBackend, fia_groups
from npu_serve.device import resolve_platform
from npu_serve.errors import DeviceUnavailable
from tests.attention.fake_torch_npu import FakeOpError, install_fake
from tests.attention.npu_contract_util import check_result, layer_for, run_backend, smol_mixed_case
from tests.attention.paged_cases import PagedCase, make_case

SUPPORTED = ["cann8.5", "cann9.1"]
WRITE_OP = {"cann8.5": "_npu_reshape_and_cache", "cann9.1": "npu_scatter_pa_kv_cache"}
SLOT_ARG = {"_npu_reshape_and_cache": "slot_indices", "npu_scatter_pa_kv_cache": "slot_mapping"}
FIA = "npu_fused_infer_attention_score"
FIA_ARGS = {"query", "key", "value", "atten_mask", "block_table", "input_layout", "block_size", "actual_seq_lengths",
            "actual_seq_lengths_kv", "num_key_value_heads", "num_heads", "scale", "sparse_mode"}
DTYPE = torch.bfloat16


@pytest.fixture(params=SUPPORTED)
def stack(request, monkeypatch):
    """The fake installed for one stack, with the NPU platform started on it."""
    monkeypatch.delenv("NPU_SERVE_NPU_DECODE_OP", raising=False)
    fake = install_fake(monkeypatch, request.param)
    resolve_platform("npu")
    return fake


def _names(fake) -> list[str]:
    return [c.name for c in fake.calls]


def _check_write(fake, call, case, cache) -> None:
    slots = call.kwargs[SLOT_ARG[call.name]]
    assert slots.dtype == torch.int32 and slots.tolist() == case.meta.slot_mapping.tolist()
    assert call.kwargs["key"].shape == case.key.shape and call.kwargs["key"].is_contiguous()
    assert call.kwargs["key_cache"].data_ptr() == cache[0].data_ptr()
    assert call.kwargs["value_cache"].data_ptr() == cache[1].data_ptr()
    if fake.profile.cache_mode:
        assert call.kwargs["cache_mode"] == "Norm"
    else:
        assert "cache_mode" not in call.kwargs


def test_mixed_batch_writes_by_capability_then_one_fia_call_in_tnd(stack):
    case = smol_mixed_case()
    out, cache = run_backend(case)
    check_result(case, out, cache)
    write_op = WRITE_OP[stack.profile.name]
    assert _names(stack) == [write_op, FIA]
    _check_write(stack, stack.calls[0], case, cache)
    kw = stack.calls[1].kwargs
    assert {k for k, v in kw.items() if v is not None and k not in ("pre_tokens", "next_tokens")} == FIA_ARGS
    assert kw["input_layout"] == "TND" and kw["sparse_mode"] == 3 and kw["block_size"] == 128
    assert kw["query"].shape == (39, 9, 64)
    assert kw["key"].shape == kw["value"].shape == (case.kv_cache.shape[1], 128, 3 * 64)
    assert kw["key"].data_ptr() == cache[0].data_ptr()
    assert kw["num_heads"] == 9 and kw["num_key_value_heads"] == 3 and kw["scale"] == case.scale
    assert kw["block_table"].dtype == torch.int32 and torch.equal(kw["block_table"], case.meta.block_tables)
    assert kw["actual_seq_lengths"] == [1, 2, 32, 39]  # cumulative query ends (TND)
    assert kw["actual_seq_lengths_kv"] == [5, 200, 180, 7]
    assert torch.equal(kw["atten_mask"], torch.triu(torch.ones(2048, 2048, dtype=torch.int8), diagonal=1))


def test_pure_decode_goes_through_fia_by_default(stack):
    case = make_case([1, 1, 1], [1, 129, 300], 3, 8, 2, 128, 128, DTYPE, seed=4, device="cpu")
    out, cache = run_backend(case)
    check_result(case, out, cache)
    assert _names(stack) == [WRITE_OP[stack.profile.name], FIA]
    assert stack.calls[1].kwargs["actual_seq_lengths"] == [1, 2, 3]


def test_atb_decode_op_on_request(stack, monkeypatch):
    monkeypatch.setenv("NPU_SERVE_NPU_DECODE_OP", "atb")
    case = make_case([1, 1, 1], [1, 129, 300], 3, 4, 1, 128, 128, DTYPE, seed=4, device="cpu")
    out, cache = run_backend(case)
    check_result(case, out, cache)
    assert _names(stack) == [WRITE_OP[stack.profile.name], "_npu_paged_attention"]
    kw = stack.calls[1].kwargs
    assert kw["num_kv_heads"] == 1 and kw["num_heads"] == 4
    lens = kw["context_lens"]
    assert lens.dtype == torch.int32 and lens.device.type == "cpu" and lens.tolist() == [1, 129, 300]
    assert kw["out"].shape == case.query.shape


def test_step_metadata_is_built_once_and_shared_by_every_layer(stack):
    case = smol_mixed_case()
    backend = NpuAttentionBackend()
    run_backend(case, backend, num_layers=3)
    writes = [c for c in stack.calls if c.name == WRITE_OP[stack.profile.name]]
    fias = [c for c in stack.calls if c.name == FIA]
    assert len(writes) == len(fias) == 3
    slot_arg = SLOT_ARG[writes[0].name]
    assert all(w.kwargs[slot_arg] is writes[0].kwargs[slot_arg] for w in writes)  # one int32 cast per step
    assert all(f.kwargs["block_table"].data_ptr() == fias[0].kwargs["block_table"].data_ptr() for f in fias)
    assert all(f.kwargs["actual_seq_lengths"] is fias[0].kwargs["actual_seq_lengths"] for f in fias)
    next_step = smol_mixed_case()
    run_backend(next_step, backend)
    assert stack.calls[-2].kwargs[slot_arg] is not writes[0].kwargs[slot_arg]


@pytest.mark.parametrize("decode_op", ["fia", "atb"])
def test_sliding_window_uses_fia_band_mode(stack, monkeypatch, decode_op):
    monkeypatch.setenv("NPU_SERVE_NPU_DECODE_OP", decode_op)
    window = 40
    mixed = make_case([1, 1, 30, 60], [5, 200, 180, 60], 2, 8, 2, 64, 128, DTYPE, seed=6, device="cpu")
    out, cache = run_backend(mixed, window=window)
    check_result(mixed, out, cache, window=window)
    decode = make_case([1, 1], [90, 300], 2, 8, 2, 64, 128, DTYPE, seed=7, device="cpu")
    out, cache = run_backend(decode, window=window)
    check_result(decode, out, cache, window=window)
    fias = [c.kwargs for c in stack.calls if c.name == FIA]
    assert len(fias) == 2 and "_npu_paged_attention" not in _names(stack)  # ATB has no window
    for kw in fias:
        assert (kw["sparse_mode"], kw["pre_tokens"], kw["next_tokens"]) == (4, window - 1, 0)


def test_query_longer_than_the_2048_mask(stack):
    case = make_case([2100], [2150], 0, 2, 1, 64, 128, DTYPE, seed=8, device="cpu")
    out, cache = run_backend(case)
    check_result(case, out, cache)
    assert _names(stack) == [WRITE_OP[stack.profile.name], FIA]


def _shared_prefix_case(num_reqs: int, prefix_blocks: int, block_size: int = 128) -> PagedCase:
    """`num_reqs` decodes whose contexts share the same `prefix_blocks` full blocks (prefix caching), each
    with one private last block, in a pool smaller than the blocks the batch names in total."""
    gen = torch.Generator().manual_seed(9)
    h, hkv, d = 4, 1, 64
    num_blocks = 1 + prefix_blocks + num_reqs
    kv = torch.randn(2, num_blocks, block_size, hkv, d, generator=gen).to(DTYPE)
    tables = torch.tensor([list(range(1, prefix_blocks + 1)) + [1 + prefix_blocks + r] for r in range(num_reqs)],
                          dtype=torch.int32)
    seq_lens = [prefix_blocks * block_size + 1 + r for r in range(num_reqs)]
    slots = [int(tables[r, -1]) * block_size + r for r in range(num_reqs)]
    qsl = list(range(num_reqs + 1))
    meta = AttentionMetadata(num_tokens=num_reqs, num_decodes=num_reqs,
                             query_start_loc=torch.tensor(qsl, dtype=torch.int32),
                             seq_lens=torch.tensor(seq_lens, dtype=torch.int32), block_tables=tables,
                             slot_mapping=torch.tensor(slots, dtype=torch.int64), query_start_loc_cpu=qsl,
                             seq_lens_cpu=seq_lens, block_size=block_size)
    rand = lambda *s: torch.randn(*s, generator=gen).to(DTYPE)  # noqa: E731
    return PagedCase(rand(num_reqs, h, d), rand(num_reqs, hkv, d), rand(num_reqs, hkv, d), kv, meta, d**-0.5)


def test_prefix_sharing_beyond_the_pool_splits_the_fia_call(stack):
    # 5 requests x 4 blocks each = 20 block references in a pool of 1 + 3 + 5 = 9 blocks.
    case = _shared_prefix_case(num_reqs=5, prefix_blocks=3)
    out, cache = run_backend(case)
    check_result(case, out, cache)
    fias = [c.kwargs for c in stack.calls if c.name == FIA]
    assert len(fias) == 3  # [2, 2, 1] requests: each call needs at most 8 of the 9 blocks
    assert [kw["actual_seq_lengths"] for kw in fias] == [[1, 2], [1, 2], [1]]
    assert sum(len(kw["actual_seq_lengths_kv"]) for kw in fias) == 5


def test_fia_groups_keep_one_call_when_the_pool_suffices():
    assert len(fia_groups([0, 1, 31, 38], [5, 200, 7], 128, num_blocks=100)) == 1
    groups = fia_groups([0, 3, 5, 9], [300, 300, 300], 128, num_blocks=6)
    assert [(g.req_start, g.req_end, g.tok_start, g.tok_end, g.q_ends) for g in groups] == [
        (0, 2, 0, 5, [3, 5]), (2, 3, 5, 9, [4])]
    assert len(fia_groups(list(range(6)), [1] * 5, 128, num_blocks=100, max_batch=2)) == 3


def test_head_size_192_decodes_past_the_atb_limit(stack):
    """ascend-notes item 4: ATB paged attention caps block_size x head_dim at 128 x 128, so a pure-decode
    step at head_dim 192 must not reach it (the old backend sent every pure decode there)."""
    case = make_case([1, 1], [50, 260], 2, 4, 2, 192, 128, DTYPE, seed=10, device="cpu")
    out, cache = run_backend(case)
    check_result(case, out, cache)
    assert "_npu_paged_attention" not in _names(stack)


def test_cann85_write_never_passes_cache_mode(monkeypatch):
    """ascend-notes item 1: on CANN 8.3-8.5 `cache_mode` does not exist; the write must be ATB there."""
    fake = install_fake(monkeypatch, "cann8.5")
    resolve_platform("npu")
    case = smol_mixed_case()
    out, cache = run_backend(case)
    check_result(case, out, cache)
    assert _names(fake)[0] == "_npu_reshape_and_cache"
    assert all("cache_mode" not in c.kwargs for c in fake.calls)


def test_cann82_is_refused_and_its_ops_would_fail(monkeypatch):
    """The 8.2 stack has no scatter op and no FIA TND paged path: the platform refuses it at start, and
    the refusal is not over-cautious: forced through, the ops say no."""
    fake = install_fake(monkeypatch, "cann8.2")
    with pytest.raises(DeviceUnavailable, match="8.3.RC1") as err:
        resolve_platform("npu")
    assert "torch-npu 2.6.0 is older than 2.7.1" in str(err.value)
    from npu_serve.device.npu_caps import probe

    caps = probe(fake, None)
    assert not caps.has_scatter_pa_kv_cache and caps.write_op == "atb"
    with pytest.raises(FakeOpError, match="no TND paged path"):
        run_backend(smol_mixed_case(), NpuAttentionBackend(caps=caps))


@pytest.mark.parametrize("profile", SUPPORTED)
def test_float16_too(monkeypatch, profile):
    fake = install_fake(monkeypatch, profile)
    resolve_platform("npu")
    case = make_case([1, 40], [77, 300], 1, 8, 2, 128, 128, torch.float16, seed=11, device="cpu")
    out, cache = run_backend(case)
    check_result(case, out, cache)
    assert _names(fake) == [WRITE_OP[profile], FIA]
    assert layer_for(case).head_dim == 128
