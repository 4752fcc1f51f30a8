#!/usr/bin/env python3
"""Decode attention on CPU, one layer: the torch path (gather + SDPA), the torch path bucketed by
context length, and the C++ paged decode kernel, on the same random batch (64 decodes, contexts
32-640, SmolLM2's 9 query over 3 KV heads, head_dim 64, block 16, bf16), with 1 and 2 threads.

  .venv/bin/python scripts/bench_cpu_decode.py

Prints the best of 40 runs in ms per layer call and the kernel's ratio against each torch path.
The first run may build the kernel (~20 s).
"""

from __future__ import annotations

import time

import npu_serve  # noqa: F401  (thread settings before torch)
import torch

from npu_serve.attention.backend import AttentionLayer
from npu_serve.attention.torch_ref import TorchAttentionBackend, _length_buckets
from npu_serve_kernels.paged_attention import cpu

ND, H, HKV, D, BS = 64, 9, 3, 64, 16


def make_batch():
    torch.manual_seed(0)
    lens = torch.randint(32, 641, (ND,), dtype=torch.int32)
    need = (lens + BS - 1) // BS
    num_blocks = int(need.sum()) + 1
    perm = torch.randperm(num_blocks - 1) + 1  # scattered blocks, as after a while of serving
    tables = torch.zeros(ND, int(need.max()), dtype=torch.int32)
    used = 0
    for r in range(ND):
        tables[r, : need[r]] = perm[used : used + need[r]]
        used += int(need[r])
    kv = torch.randn(2, num_blocks, BS, HKV, D).to(torch.bfloat16)
    q = torch.randn(ND, H, D).to(torch.bfloat16)
    return q, kv, tables, lens


def best_ms(fn, runs: int = 40) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    q, kv, tables, lens = make_batch()
    scale = D**-0.5
    layer = AttentionLayer(layer_idx=0, num_heads=H, num_kv_heads=HKV, head_dim=D, v_head_dim=D, scale=scale)

    def torch_path():
        return TorchAttentionBackend._decode(q, kv, tables, lens, int(lens.max()), layer)

    def torch_bucketed():
        out = torch.empty_like(q)
        for group in _length_buckets(lens.tolist(), BS):
            idx = torch.tensor(group)
            out[idx] = TorchAttentionBackend._decode(q[idx], kv, tables[idx], lens[idx], int(lens[group[-1]]), layer)
        return out

    def kernel():
        return cpu.paged_decode(q, kv[0], kv[1], tables, lens, scale)

    if not cpu.available():
        raise SystemExit("the C++ decode kernel could not be built here")
    diff = (torch_path().float() - kernel().float()).abs().max().item()
    print(f"max |torch - kernel| = {diff:.4g} (bf16)")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        a, b, c = best_ms(torch_path), best_ms(torch_bucketed), best_ms(kernel)
        print(f"threads={threads}: gather+SDPA {a:.2f} ms, bucketed {b:.2f} ms, kernel {c:.2f} ms "
              f"(kernel {a / c:.1f}x / {b / c:.1f}x faster)")


if __name__ == "__main__":
    main()
