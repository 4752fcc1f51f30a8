#!/usr/bin/env python3
"""Prefill attention on CPU, one layer call: torch's reference path (TorchAttentionBackend._prefill:
gather the cached keys, SDPA, causal or with the explicit mask a chunk after cached tokens needs) and
the C++ AMX prefill kernel (kernels/npu_serve_kernels/paged_attention/cpu_prefill.h), on the same
random paged cache (SmolLM2's 9 query over 3 KV heads, head_dim 64, block 16, bf16), alternated.

  .venv/bin/python scripts/bench_cpu_prefill.py

Prints the median of 40 alternated runs per shape (queries x keys), the kernel's ratio against torch
and their largest difference. Needs a CPU with AMX (the kernel runs nowhere else); the first run may
build the kernels (~60 s).
"""

from __future__ import annotations

import sys
import time

import npu_serve  # noqa: F401  (thread settings before torch)
import torch

from npu_serve.attention.backend import AttentionLayer
from npu_serve.attention.torch_ref import TorchAttentionBackend
from npu_serve_kernels.linear import cpu as linear
from npu_serve_kernels.paged_attention import cpu

H, HKV, D, BS = 9, 3, 64, 16
SHAPES = [(256, 256), (250, 250), (162, 162), (512, 512), (100, 250), (218, 250), (33, 1000)]  # (n, seq_len)


def main() -> int:
    if not (cpu.available() and linear.amx_available()):
        print("the prefill kernel needs a CPU with AMX (and the kernels built): nothing to compare here")
        return 1
    torch.manual_seed(0)
    num_blocks = 1000 // BS + 2
    k_cache = torch.randn(num_blocks, BS, HKV, D).bfloat16()
    v_cache = torch.randn(num_blocks, BS, HKV, D).bfloat16()
    table = torch.randperm(num_blocks).to(torch.int32)
    layer = AttentionLayer(layer_idx=0, num_heads=H, num_kv_heads=HKV, head_dim=D, v_head_dim=D, scale=D**-0.5)
    print(f"threads={torch.get_num_threads()}  heads {H}/{HKV}  head_dim {D}  block {BS}  bf16")
    print(f"{'queries x keys':>22} {'torch ms':>9} {'kernel ms':>10} {'torch/kernel':>13} {'max diff':>9}")
    for n, seq_len in SHAPES:
        q = torch.randn(n, H, D).bfloat16()
        runs = {
            "torch": lambda: TorchAttentionBackend._prefill(q, (k_cache, v_cache), table, seq_len, layer),
            "kernel": lambda: cpu.paged_prefill(q, k_cache, v_cache, table, seq_len, layer.scale),
        }
        diff = (runs["torch"]().float() - runs["kernel"]().float()).abs().max().item()
        times = {name: [] for name in runs}
        for _ in range(40):
            for name, run in runs.items():
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
        med = {name: sorted(ts)[len(ts) // 2] * 1e3 for name, ts in times.items()}
        label = f"{n} x {seq_len}" + ("" if n == seq_len else f" ({seq_len - n} cached)")
        print(f"{label:>22} {med['torch']:9.3f} {med['kernel']:10.3f} {med['torch'] / med['kernel']:12.2f}x {diff:9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
