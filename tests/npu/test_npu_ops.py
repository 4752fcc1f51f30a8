"""Each Ascend op npu-serve calls, on the real chip, against the float64 torch reference: the KV write ops,
FIA for mixed batches, pure decodes, windows and long queries, ATB paged attention, and the batch shapes
the engine produces (chunks crossing blocks after a cached prefix, heavy prefix sharing in a small pool,
several steps writing and reading the same cache, copy-on-write blocks).

Geometries: SmolLM2-135M's (9 query heads over 3, head_dim 64) and 8 over 2 at head_dim 128; block 128.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from npu_serve.attention.backend import AttentionMetadata
from npu_serve.attention.npu import NpuAttentionBackend, causal_mask_2048
from npu_serve.attention.npu_limits import fia_pre_tokens
from npu_serve.worker.model_runner import ModelRunner
from tests.attention.npu_contract_util import check_result, expected_attention, expected_cache, layer_for, run_backend
from tests.attention.paged_cases import PagedCase, make_case

GEOMETRIES = {"9x3x64": (9, 3, 64), "8x2x128": (8, 2, 128)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BS = 128


def _case(npu, q_lens, seq_lens, num_decodes, geometry="9x3x64", dtype=torch.bfloat16, seed=0) -> PagedCase:
    h, hkv, d = GEOMETRIES[geometry]
    return make_case(q_lens, seq_lens, num_decodes, h, hkv, d, BS, dtype, seed=seed, device=str(npu.torch_device))


def _backend(npu, decode_op="fia") -> NpuAttentionBackend:
    backend = NpuAttentionBackend(caps=npu.capabilities, decode_op=decode_op)
    backend.configure(block_size=BS, dtype=torch.bfloat16)
    return backend


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("op", ["atb", "scatter"])
def test_write_op(npu, op, geometry, dtype):
    import torch_npu

    caps = npu.capabilities
    if op == "atb" and not caps.has_atb:
        pytest.skip(f"ATB ops unavailable on this stack: {caps.atb_error}")
    if op == "scatter" and not caps.scatter_has_cache_mode:
        pytest.skip("this stack's npu_scatter_pa_kv_cache has no cache_mode (writes NZ only): not used here")
    case = _case(npu, [1, 1, 60], [5, 200, 280], 2, geometry, DTYPES[dtype])
    key_cache, value_cache = (c.clone() for c in case.kv_cache)
    slots = case.meta.slot_mapping.to(torch.int32)
    if op == "atb":
        torch_npu._npu_reshape_and_cache(key=case.key, value=case.value, key_cache=key_cache, value_cache=value_cache,
                                         slot_indices=slots)
    else:
        torch_npu.npu_scatter_pa_kv_cache(key=case.key, value=case.value, key_cache=key_cache,
                                          value_cache=value_cache, slot_mapping=slots, cache_mode="Norm")
    torch.npu.synchronize()
    key_exp, value_exp = expected_cache(case)
    assert torch.equal(key_cache.cpu(), key_exp) and torch.equal(value_cache.cpu(), value_exp)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_fia_mixed_batch_with_a_chunk_crossing_blocks_after_a_cached_prefix(npu, geometry, dtype):
    # two decodes; a 60-token chunk at positions 220..279 (crosses the block boundary at 256) after 220
    # cached tokens; a fresh 7-token prefill
    case = _case(npu, [1, 1, 60, 7], [5, 200, 280, 7], 2, geometry, DTYPES[dtype], seed=1)
    out, cache = run_backend(case, _backend(npu))
    check_result(case, out, cache)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_fia_pure_decode(npu, geometry):
    case = _case(npu, [1, 1, 1, 1], [1, 127, 129, 300], 4, geometry, seed=2)
    out, cache = run_backend(case, _backend(npu))
    check_result(case, out, cache)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_atb_paged_attention_decode(npu, geometry):
    if not npu.capabilities.has_atb:
        pytest.skip(f"ATB ops unavailable on this stack: {npu.capabilities.atb_error}")
    case = _case(npu, [1, 1, 1, 1], [1, 127, 129, 300], 4, geometry, seed=3)
    out, cache = run_backend(case, _backend(npu, decode_op="atb"))
    check_result(case, out, cache)


def test_query_longer_than_the_2048_mask(npu):
    case = _case(npu, [1, 2100], [40, 2150], 1, "8x2x128", seed=4)
    out, cache = run_backend(case, _backend(npu))
    check_result(case, out, cache)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_sliding_window_mixed_and_pure_decode(npu, geometry):
    """The pre_tokens convention (npu_limits.fia_pre_tokens, W - 1 from the op docs' band figure) and FIA
    band mode on decode rows (the docs call pre_tokens invalid when Q_S is 1)."""
    window = 40
    mixed = _case(npu, [1, 1, 60, 50], [5, 200, 280, 50], 2, geometry, seed=5)
    out, cache = run_backend(mixed, _backend(npu), window=window)
    check_result(mixed, out, cache, window=window)
    decode = _case(npu, [1, 1], [90, 300], 2, geometry, seed=6)
    out, cache = run_backend(decode, _backend(npu), window=window)
    check_result(decode, out, cache, window=window)


def test_fia_band_convention(npu):
    """Which pre_tokens keeps exactly W keys: says so in the failure if it is not W - 1."""
    import torch_npu

    window = 40
    case = _case(npu, [30], [200], 0, "8x2x128", seed=7)
    key_cache, value_cache = (c.to(case.query.device) for c in expected_cache(case))
    nb = key_cache.shape[0]
    want = expected_attention(case, window)
    hits = []
    for pre in (window - 2, window - 1, window):
        out, _ = torch_npu.npu_fused_infer_attention_score(
            query=case.query, key=key_cache.view(nb, BS, -1), value=value_cache.view(nb, BS, -1),
            atten_mask=causal_mask_2048(case.query.device), block_table=case.meta.block_tables, input_layout="TND",
            block_size=BS, actual_seq_lengths=[30], actual_seq_lengths_kv=[200], num_key_value_heads=2, num_heads=8,
            scale=case.scale, sparse_mode=4, pre_tokens=pre, next_tokens=0)
        if torch.allclose(out.cpu().double(), want, atol=3e-2, rtol=3e-2):
            hits.append(pre)
    print(f"FIA band: pre_tokens giving a {window}-key window: {hits}")
    assert hits == [fia_pre_tokens(window)], f"pre_tokens that match a window of {window}: {hits}"


def _shared_prefix_meta(npu, num_reqs: int, prefix_blocks: int, geometry="9x3x64", seed=8) -> PagedCase:
    h, hkv, d = GEOMETRIES[geometry]
    dev = npu.torch_device
    gen = torch.Generator().manual_seed(seed)
    num_blocks = 1 + prefix_blocks + num_reqs
    kv = torch.randn(2, num_blocks, BS, hkv, d, generator=gen).to(torch.bfloat16)
    tables = torch.tensor([list(range(1, prefix_blocks + 1)) + [1 + prefix_blocks + r] for r in range(num_reqs)],
                          dtype=torch.int32)
    seq_lens = [prefix_blocks * BS + 1 + r for r in range(num_reqs)]
    slots = [int(tables[r, -1]) * BS + r for r in range(num_reqs)]
    qsl = list(range(num_reqs + 1))
    meta = AttentionMetadata(num_tokens=num_reqs, num_decodes=num_reqs,
                             query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
                             seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
                             block_tables=tables.to(dev), slot_mapping=torch.tensor(slots, device=dev),
                             query_start_loc_cpu=qsl, seq_lens_cpu=seq_lens, block_size=BS)
    r = [torch.randn(num_reqs, n, d, generator=gen).to(torch.bfloat16).to(dev) for n in (h, hkv, hkv)]
    return PagedCase(r[0], r[1], r[2], kv.to(dev), meta, d**-0.5)


def test_heavy_prefix_sharing_in_a_small_pool(npu):
    # 6 requests x 5 blocks = 30 block references in a pool of 11 blocks: the backend splits the FIA call.
    case = _shared_prefix_meta(npu, num_reqs=6, prefix_blocks=4)
    out, cache = run_backend(case, _backend(npu))
    check_result(case, out, cache)


def test_fia_with_more_block_references_than_the_pool(npu):
    """ascend-notes item 10, on the op itself: the docs say blocknum must cover the blocks the batch needs
    by actual_seq_lengths_kv. npu-serve splits such calls anyway; this records what the op does."""
    import torch_npu

    case = _shared_prefix_meta(npu, num_reqs=6, prefix_blocks=4, seed=9)
    key_cache, value_cache = expected_cache(case)
    nb = key_cache.shape[0]
    dev = case.query.device
    try:
        out, _ = torch_npu.npu_fused_infer_attention_score(
            query=case.query, key=key_cache.to(dev).view(nb, BS, -1), value=value_cache.to(dev).view(nb, BS, -1),
            atten_mask=causal_mask_2048(dev), block_table=case.meta.block_tables, input_layout="TND", block_size=BS,
            actual_seq_lengths=case.meta.query_start_loc_cpu[1:], actual_seq_lengths_kv=case.meta.seq_lens_cpu,
            num_key_value_heads=3, num_heads=9, scale=case.scale, sparse_mode=3)
        right = torch.allclose(out.cpu().double(), expected_attention(case), atol=3e-2, rtol=3e-2)
        outcome = "accepted, right answer" if right else "accepted, WRONG answer"
    except RuntimeError as e:
        outcome = f"refused: {str(e).splitlines()[0][:120]}"
    print(f"ITEM10 FIA with 30 block references in an 11-block pool: {outcome}")
    assert "WRONG" not in outcome, "FIA silently miscomputes past the pool: the split in fia_groups is required"


def test_multi_step_write_and_read(npu):
    """A prefill then five decode steps on the same cache, every step checked against the reference."""
    h, hkv, d = GEOMETRIES["9x3x64"]
    dev = npu.torch_device
    gen = torch.Generator().manual_seed(10)
    tables = [[3, 1], [2, 4, 5]]
    key_cache = torch.zeros(6, BS, hkv, d, dtype=torch.bfloat16, device=dev)
    value_cache = torch.zeros_like(key_cache)
    backend = _backend(npu)
    lens = [0, 0]
    for step, q_lens in enumerate([[150, 250]] + [[1, 1]] * 5):
        seq_lens = [n + q for n, q in zip(lens, q_lens)]
        meta = _meta(dev, q_lens, seq_lens, tables, 2 if step else 0)
        q, k, v = (torch.randn(meta.num_tokens, n, d, generator=gen).to(torch.bfloat16).to(dev) for n in (h, hkv, hkv))
        case = PagedCase(q, k, v, torch.stack([key_cache, value_cache]), meta, d**-0.5)
        expected = expected_attention(case)
        out = backend.forward(q, k, v, (key_cache, value_cache), meta, layer_for(case))
        torch.testing.assert_close(out.cpu().double(), expected, atol=3e-2, rtol=3e-2, msg=f"step {step}")
        lens = seq_lens


def _meta(dev, q_lens, seq_lens, tables, num_decodes) -> AttentionMetadata:
    """Metadata for requests whose new tokens are the last q_len of seq_len, in blocks `tables`."""
    qsl = [0]
    for q in q_lens:
        qsl.append(qsl[-1] + q)
    slots = [tables[r][p // BS] * BS + p % BS for r, (q, n) in enumerate(zip(q_lens, seq_lens)) for p in range(n - q, n)]
    width = max(len(t) for t in tables)
    return AttentionMetadata(
        num_tokens=qsl[-1], num_decodes=num_decodes, query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=dev),
        slot_mapping=torch.tensor(slots, device=dev), query_start_loc_cpu=qsl, seq_lens_cpu=list(seq_lens),
        block_size=BS)


def test_copy_on_write_blocks(npu):
    """n > 1 forks share full blocks and copy the partial last one (ModelRunner._copy_blocks on the NPU
    caches); parent and child then diverge in their copies, each reading its own."""
    from npu_serve.worker.kv_cache import KVCacheSpec, allocate_kv_caches

    h, hkv, d = GEOMETRIES["8x2x128"]
    dev = npu.torch_device
    gen = torch.Generator().manual_seed(11)

    def rand(t, n):
        return torch.randn(t, n, d, generator=gen).to(torch.bfloat16).to(dev)

    spec = KVCacheSpec(num_layers=1, num_kv_heads=hkv, head_dim=d, dtype=torch.bfloat16, block_size=BS)
    caches = allocate_kv_caches(spec, 6, dev)
    backend = _backend(npu)
    layer = layer_for(PagedCase(rand(1, h), rand(1, hkv), rand(1, hkv), None, None, d**-0.5))
    prompt = _meta(dev, [200], [200], [[1, 2]], 0)
    backend.forward(rand(200, h), rand(200, hkv), rand(200, hkv), caches[0], prompt, layer)
    ModelRunner._copy_blocks(SimpleNamespace(kv_caches=caches, device=dev), [(2, 3)])  # the child's copy of block 2
    meta = _meta(dev, [1, 1], [201, 201], [[1, 2], [1, 3]], 2)  # parent writes block 2, child block 3
    q, k, v = rand(2, h), rand(2, hkv), rand(2, hkv)
    key_cache, value_cache = caches[0]
    case = PagedCase(q, k, v, torch.stack([key_cache.clone(), value_cache.clone()]), meta, d**-0.5)
    expected = expected_attention(case)
    out = backend.forward(q, k, v, caches[0], meta, layer)
    torch.testing.assert_close(out.cpu().double(), expected, atol=3e-2, rtol=3e-2)
    assert torch.equal(key_cache[2, :72].cpu(), key_cache[3, :72].cpu())  # the copied prefix of the block
    assert not torch.equal(key_cache[2, 72].cpu(), key_cache[3, 72].cpu())  # then each its own token
