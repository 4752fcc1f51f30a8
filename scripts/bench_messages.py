"""Per-step message cost: pickled size and encode/decode time of a SchedulerOutput at batch 64.

Builds the step with the real Scheduler (torch-free): 64 requests with prompts of 32-640 tokens
(vocabulary 49152, ids like the server's), prefilled, then measures decode steps, the common case.
Prints the part every rank gets (`for_workers()`), the whole message (as if rank 0's sampling part
were pickled too), and what a diff-only block table (vLLM v1's cached-request form) would weigh.

    .venv/bin/python scripts/bench_messages.py [--batch 64] [--block-size 16] [--reps 2000]
"""

from __future__ import annotations

import argparse
import pickle
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npu_serve.engine.messages import SchedulerOutput  # noqa: E402
from npu_serve.engine.request import Request  # noqa: E402
from npu_serve.engine.scheduler import Scheduler, SchedulerConfig  # noqa: E402
from npu_serve.sampling_params import SamplingParams  # noqa: E402


def decode_step(batch: int, block_size: int, seed: int = 0) -> tuple[Scheduler, SchedulerOutput]:
    rng = random.Random(seed)
    s = Scheduler(SchedulerConfig(max_num_seqs=batch, max_num_batched_tokens=1 << 20, max_model_len=4096,
                                  block_size=block_size, num_blocks=batch * 4096 // block_size + 1))
    for i in range(batch):
        prompt = [rng.randrange(49152) for _ in range(rng.randint(32, 640))]
        p = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=512, ignore_eos=True)
        s.add_request(Request(f"chatcmpl-{rng.getrandbits(128):032x}#0", prompt, p, parent_id="x"))
    for _ in range(3):  # the prefill step, then decodes
        out = s.schedule()
        s.update(out, {x.request_id: rng.randrange(49152) for x in out.scheduled if x.sample})
    return s, s.schedule()


def timed(fn, reps: int) -> float:
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - t0) / reps)
    return statistics.median(samples)


def report(name: str, msg, reps: int) -> None:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    enc = timed(lambda: pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL), reps)
    dec = timed(lambda: pickle.loads(data), reps)
    print(f"{name:<44} {len(data):>8,} B  encode {enc * 1e6:7.1f} us  decode {dec * 1e6:7.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2000)
    args = ap.parse_args()
    _, out = decode_step(args.batch, args.block_size)
    blocks = sum(len(x.block_ids) for x in out.scheduled)
    print(f"decode step: {len(out.scheduled)} requests, {out.num_batched_tokens} tokens, {blocks} block ids")
    report("every rank's part (for_workers())", out.for_workers(), args.reps)
    report("whole message (sampling part pickled too)", out, args.reps)
    # A diff-only table sends a block id only in the step that allocates it: at most one per request here.
    diff = replace(out.for_workers(), scheduled=[replace(x, block_ids=x.block_ids[-1:] if x.start % args.block_size == 0
                                                         else []) for x in out.scheduled])
    report("hypothetical diff-only block tables", diff, args.reps)


if __name__ == "__main__":
    main()
