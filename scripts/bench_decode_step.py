#!/usr/bin/env python3
"""Decode step time of two engine configurations, paired: both engines in one process, runs
alternated (A B B A ...), so load from other processes on a shared machine hits both alike.

  .venv/bin/python scripts/bench_decode_step.py MODEL_DIR --a '{"cpu_gemv_rows": 0}' \\
      --b '{"cpu_gemv_rows": 16}' --batch 1,2,4,8,16

For each batch size: that many 250-token prompts are prefilled, then 16 decode steps are timed
(wall clock and process CPU time per step); 4 alternated runs per engine, the second best reported.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from npu_serve import LLM, SamplingParams


def decode_ms(llm: LLM, batch: int, rng: random.Random, steps: int = 16) -> tuple[float, float]:
    core = llm.engine
    sp = SamplingParams(temperature=0, max_tokens=steps + 2, ignore_eos=True)
    for _ in range(batch):
        core.add(core.make_parent(str(rng.random()), [rng.randrange(3, 40000) for _ in range(250)], sp))
    while core.scheduler.waiting:
        core.step()
    core.step()
    wall, cpu, n = time.perf_counter(), time.process_time(), 0
    while core.has_unfinished and n < steps:
        core.step()
        n += 1
    wall, cpu = (time.perf_counter() - wall) / n * 1e3, (time.process_time() - cpu) / n * 1e3
    while core.has_unfinished:
        core.step()
    return wall, cpu


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--a", default='{"cpu_gemv_rows": 0}')
    p.add_argument("--b", required=True)
    p.add_argument("--batch", default="1,2,4,8,16")
    args = p.parse_args()
    common = {"model": args.model, "device": "cpu", "dtype": "bfloat16"}
    llms = {"A": LLM(**common, **json.loads(args.a)), "B": LLM(**common, **json.loads(args.b))}
    rng = random.Random(0)
    print(f"A = {args.a}  B = {args.b}")
    for batch in [int(s) for s in args.batch.split(",")]:
        res = {"A": [], "B": []}
        for r in range(4):
            for k in ("A", "B") if r % 2 == 0 else ("B", "A"):
                res[k].append(decode_ms(llms[k], batch, rng))
        (aw, ac), (bw, bc) = (sorted(res[k])[1] for k in ("A", "B"))
        print(f"batch {batch:>2}: wall A {aw:6.1f} ms  B {bw:6.1f} ms  B/A {bw / aw:.2f}   "
              f"cpu A {ac:6.1f} ms  B {bc:6.1f} ms  B/A {bc / ac:.2f}", flush=True)


if __name__ == "__main__":
    main()
