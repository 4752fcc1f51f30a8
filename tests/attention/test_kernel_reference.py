"""The kernels' torch references against a computation that never touches the paged cache: each
request's K/V kept as plain sequences, attention written out as softmax(QK^T)V with an explicit
causal loop (and the window, softcap and sinks applied one query at a time). This is what makes the
references fit to judge the device kernels."""

from __future__ import annotations

import pytest
import torch

from npu_serve_kernels.paged_attention.reference import paged_attention_ref
from npu_serve_kernels.reshape_and_cache.reference import reshape_and_cache_ref


def _dense(q, k, v, scale, window=None, softcap=None, sinks=None):
    """q [ql, H, D] are the last ql positions of k [sl, Hkv, D] / v [sl, Hkv, DV]; float64, one query
    at a time: query i (position p = sl - ql + i) sees keys max(0, p - window + 1) .. p."""
    ql, h, _ = q.shape
    sl, hkv, _ = k.shape
    out = torch.empty(ql, h, v.shape[2], dtype=torch.float64)
    for i in range(ql):
        p = sl - ql + i
        lo = 0 if window is None else max(0, p - window + 1)
        for head in range(h):
            kv_head = head // (h // hkv)
            scores = (k[lo : p + 1, kv_head].double() @ q[i, head].double()) * scale
            if softcap is not None:
                scores = softcap * torch.tanh(scores / softcap)
            if sinks is not None:
                scores = torch.cat([scores, sinks[head : head + 1].double()])
            probs = torch.softmax(scores, 0)[: p + 1 - lo]
            out[i, head] = probs @ v[lo : p + 1, kv_head].double()
    return out


@pytest.mark.parametrize("window,softcap,sinks,dv", [
    (None, None, False, 8), (3, None, False, 8), (5, 1.5, True, 8), (None, None, False, 6), (2, 2.0, False, 12),
])
def test_reference_matches_dense_attention_over_plain_sequences(window, softcap, sinks, dv):
    torch.manual_seed(0)
    block_size, h, hkv, d = 4, 4, 2, 8
    q_lens, seq_lens = [1, 1, 3, 6], [5, 9, 7, 6]
    num_blocks = 16
    kv_cache = (torch.randn(num_blocks, block_size, hkv, d), torch.randn(num_blocks, block_size, hkv, dv))
    tables = torch.zeros(len(q_lens), 4, dtype=torch.int32)
    free = iter(torch.randperm(num_blocks - 1).add(1).tolist())
    seqs_k, seqs_v, queries, slots = [], [], [], []
    for r, (ql, sl) in enumerate(zip(q_lens, seq_lens)):
        for b in range(-(-sl // block_size)):
            tables[r, b] = next(free)
        k, v = torch.randn(sl, hkv, d) * 2, torch.randn(sl, hkv, dv)
        seqs_k.append(k)
        seqs_v.append(v)
        queries.append(torch.randn(ql, h, d))
        for p in range(sl):  # context slots are written directly; new ones go through the reference write
            slot = int(tables[r, p // block_size]) * block_size + p % block_size
            if p < sl - ql:
                kv_cache[0].view(-1, hkv, d)[slot] = k[p]
                kv_cache[1].view(-1, hkv, dv)[slot] = v[p]
            else:
                slots.append(slot)
    new_k = torch.cat([k[sl - ql:] for k, ql, sl in zip(seqs_k, q_lens, seq_lens)])
    new_v = torch.cat([v[sl - ql:] for v, ql, sl in zip(seqs_v, q_lens, seq_lens)])
    reshape_and_cache_ref(new_k, new_v, kv_cache, torch.tensor(slots))

    qsl = [0]
    for ql in q_lens:
        qsl.append(qsl[-1] + ql)
    query = torch.cat(queries)
    sink = torch.randn(h) if sinks else None
    out = paged_attention_ref(query, kv_cache, tables, qsl, seq_lens, d**-0.5, window, softcap, sink)
    for r in range(len(q_lens)):
        expected = _dense(queries[r], seqs_k[r], seqs_v[r], d**-0.5, window, softcap, sink)
        torch.testing.assert_close(out[qsl[r]:qsl[r + 1]].double(), expected, atol=1e-5, rtol=1e-5)
