"""A stand-in for torch_npu, used ONLY by the NPU backend's contract tests: it records every call
and performs each op as the torch_npu / vllm-ascend sources describe it (computed with our torch
references), so a wrong layout or length convention shows up as a wrong answer as well as in the
recorded arguments."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from npu_serve_kernels.paged_attention.reference import paged_attention_ref
from npu_serve_kernels.reshape_and_cache.reference import reshape_and_cache_ref


@dataclass
class Call:
    name: str
    kwargs: dict


@dataclass
class FakeTorchNpu:
    calls: list[Call] = field(default_factory=list)

    def _record(self, name: str, args: tuple, kwargs: dict) -> None:
        if args:
            raise AssertionError(f"{name} called with positional args; the backend passes keywords")
        self.calls.append(Call(name, dict(kwargs)))

    @staticmethod
    def _write(key, value, key_cache, value_cache, slots) -> None:
        # The op writes into both caches in place; the reference takes them stacked.
        stacked = torch.stack([key_cache, value_cache])
        reshape_and_cache_ref(key, value, stacked, slots)
        key_cache.copy_(stacked[0])
        value_cache.copy_(stacked[1])

    def npu_scatter_pa_kv_cache(self, *args, **kw):
        self._record("npu_scatter_pa_kv_cache", args, kw)
        self._write(kw["key"], kw["value"], kw["key_cache"], kw["value_cache"], kw["slot_mapping"])

    def _npu_reshape_and_cache(self, *args, **kw):
        self._record("_npu_reshape_and_cache", args, kw)
        self._write(kw["key"], kw["value"], kw["key_cache"], kw["value_cache"], kw["slot_indices"])

    def _npu_paged_attention(self, *args, **kw):
        self._record("_npu_paged_attention", args, kw)
        query = kw["query"]
        kv_cache = torch.stack([kw["key_cache"], kw["value_cache"]])
        lens = kw["context_lens"].tolist()
        kw["out"].copy_(paged_attention_ref(query, kv_cache, kw["block_table"], list(range(len(lens) + 1)),
                                            lens, kw["scale_value"]))

    def npu_fused_infer_attention_score(self, *args, **kw):
        self._record("npu_fused_infer_attention_score", args, kw)
        query, key, value = kw["query"], kw["key"], kw["value"]
        num_blocks, block_size, _ = key.shape
        hkv = kw["num_key_value_heads"]
        kv_cache = torch.stack([key.view(num_blocks, block_size, hkv, -1), value.view(num_blocks, block_size, hkv, -1)])
        # TND: actual_seq_lengths are the cumulative query ends; sparse_mode=3 is bottom-right causal.
        qsl = [0] + list(kw["actual_seq_lengths"])
        out = paged_attention_ref(query, kv_cache, kw["block_table"], qsl, list(kw["actual_seq_lengths_kv"]),
                                  kw["scale"])
        lse = torch.zeros(query.shape[0], query.shape[1], 1)
        return out, lse
