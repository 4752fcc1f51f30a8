#!/usr/bin/env python3
"""The bf16 linear kernel over packed weights (npu_serve_kernels.linear, each tile variant) against
F.linear (oneDNN) on SmolLM2-135M's linear shapes, per input row count, one thread (--threads), paired
and alternated in one process:

  .venv/bin/python scripts/bench_cpu_gemv.py [--rows 1,2,4,8,12,16] [--threads 2] [--no-lm-head]
                                             [--other-source old.cpp]

For each row count it times one step's worth of linears (30 layers of q, k, v, o, gate, up, down,
then lm_head unless --no-lm-head, as for prefill-sized row counts; weights far larger than the caches,
as in a real step) with the kernel's dot tiles, its FMA tiles, its AMX tiles (where the CPU has AMX)
and F.linear, alternating, and prints
the best-of-N step times and the ratios to F.linear. Below 8 rows the kernel runs its dot tiles
whatever variant is set (cpu_gemm.h), so the two kernel columns time the same tiles there.
`--other-source` builds another kernel from a source file that binds `linear_bf16(x, w)` and
`max_rows()` (e.g. the GEMV kernel of commit 7e41019 with a binding) and times it in the same alternation.
"""

from __future__ import annotations

import argparse
import time

import npu_serve  # noqa: F401  (thread settings before torch)
import torch
import torch.nn.functional as F

from npu_serve_kernels._cpu_build import CpuExtension
from npu_serve_kernels.linear import cpu as gemv

H, KV, I, V, LAYERS = 576, 192, 1536, 49152, 30
SHAPES = [(H, H), (KV, H), (KV, H), (H, H), (I, H), (I, H), (H, I)]  # (out, in) per layer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="1,2,4,8,12,16")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--other-source", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-lm-head", action="store_true",
                   help="leave lm_head out (a prefill chunk runs it on its last token only)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weights = [(torch.randn(n, k) / k**0.5).bfloat16() for _ in range(LAYERS) for n, k in SHAPES]
    if not args.no_lm_head:
        weights.append((torch.randn(V, H) / H**0.5).bfloat16())
    packed = {id(w): gemv.pack(w) for w in weights}

    def variant(name):
        def run(x, w):
            return packed[id(w)](x)
        return name, run

    fns = {"F.linear": F.linear}
    chosen = gemv.variant()
    tiles = ["dot", "fma"] + (["amx"] if gemv.amx_available() else [])
    fns.update(dict(variant(t) for t in tiles))
    if args.other_source:
        other = CpuExtension("npu_serve_cpu_gemv_other", args.other_source, "other GEMV").load()
        fns["other"] = other.linear_bf16
        other_max = other.max_rows()
    print(f"kernel variant chosen here: {chosen}")
    print(f"{'rows':>4} " + " ".join(f"{n:>10}" for n in fns) + "".join(f"  {t + '/F.linear':>12}" for t in tiles) +
          ("  dot/other" if "other" in fns else ""))
    with torch.inference_mode():
        for m in [int(r) for r in args.rows.split(",")]:
            xs = {k: torch.randn(m, k).bfloat16() for k in (H, I)}
            run = {n: f for n, f in fns.items() if n != "other" or m <= other_max}
            best = {n: float("inf") for n in fns}
            for _ in range(args.repeats):
                for name, fn in run.items():
                    if name in tiles:
                        gemv.set_variant(name)
                    t0 = time.perf_counter()
                    for w in weights:
                        fn(xs[w.shape[1]], w)
                    best[name] = min(best[name], time.perf_counter() - t0)
            line = f"{m:>4} " + " ".join(f"{best[n] * 1e3:>8.2f}ms" for n in fns)
            line += "".join(f"  {best[t] / best['F.linear']:>12.2f}" for t in tiles)
            if "other" in run:
                line += f"  {best['dot'] / best['other']:>9.2f}"
            print(line, flush=True)
    gemv.set_variant(chosen)


if __name__ == "__main__":
    main()
