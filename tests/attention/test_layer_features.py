"""The torch reference backend and the CPU backend (C++ decode kernel) on mixed batches of decodes,
chunks with cached context and fresh prefills, for layers with a sliding window, a logit softcap,
sinks and values of another head size than keys, against the kernels' plain reference
(paged_attention_ref, itself checked against dense attention in test_kernel_reference.py)."""

from __future__ import annotations

import pytest
import torch

from npu_serve.attention.backend import AttentionLayer
from npu_serve.attention.registry import get_backend
from npu_serve_kernels.paged_attention.reference import paged_attention_ref
from npu_serve_kernels.reshape_and_cache.reference import reshape_and_cache_ref
from tests.attention.paged_cases import caches_equal, clone_cache, random_case, tolerance

FEATURES = [  # window, softcap, sinks
    (None, None, False),
    (1, None, False),
    (7, None, False),
    (16, 3.0, False),
    (None, 1.0, False),
    (None, None, True),
    (23, 2.0, True),
]


def _expected(case):
    cache = clone_cache(case.kv_cache)
    reshape_and_cache_ref(case.key, case.value, cache, case.meta.slot_mapping)
    m = case.meta
    out = paged_attention_ref(case.query, cache, m.block_tables, m.query_start_loc_cpu, m.seq_lens_cpu, case.scale,
                              case.window, case.softcap, case.sinks)
    return cache, out


def _forward(backend, case):
    cache = clone_cache(case.kv_cache)
    kwargs = {"sinks": case.sinks} if case.sinks is not None else {}
    out = backend.forward(case.query, case.key, case.value, cache, case.meta, case.layer, **kwargs)
    return cache, out


@pytest.mark.parametrize("backend_name", ["torch", "cpu"])
@pytest.mark.parametrize("window,softcap,sinks", FEATURES)
@pytest.mark.parametrize("seed,dtype,head_dim,v_head_dim", [
    (0, torch.float32, 64, 64), (1, torch.bfloat16, 64, 64), (2, torch.float32, 24, 12), (3, torch.float32, 64, 80),
])
def test_backend_matches_reference(backend_name, window, softcap, sinks, seed, dtype, head_dim, v_head_dim):
    backend = get_backend(backend_name)
    assert backend.unsupported(AttentionLayer(0, 4, 2, head_dim, v_head_dim, 0.1, window, softcap, sinks)) is None
    case = random_case(seed, 16, head_dim, dtype, max_len=60, v_head_dim=v_head_dim)
    case.scale *= 3.0  # peaked attention: windows and softcaps change the result a lot
    case = case.with_features(window, softcap, sinks, seed)
    want_cache, want = _expected(case)
    got_cache, got = _forward(backend, case)
    assert caches_equal(got_cache, want_cache)
    assert got.shape == (case.query.shape[0], case.query.shape[1], v_head_dim)
    torch.testing.assert_close(got, want, **tolerance(dtype))
    if window or softcap or sinks:
        _, plain = _expected(case.with_features())
        assert (plain.float() - want.float()).abs().max() > 0.05, "the feature must change this batch's result"


def test_window_covering_the_context_is_plain_attention():
    """A window at least as long as every context gives the plain result (the same path's output)."""
    case = random_case(5, 16, 64, torch.float32, max_len=40)
    _, plain = _forward(get_backend("torch"), case)
    _, wide = _forward(get_backend("torch"), case.with_features(window=200))
    torch.testing.assert_close(wide, plain, atol=1e-6, rtol=1e-6)
