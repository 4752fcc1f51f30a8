"""Tensor parallelism on this machine: step time and output tokens/s at TP=1 and TP=N, same workload,
same process, plus the size of each step's broadcast message.

Workload: `--num-prompts` seeded prompts of 64-256 tokens, `--max-tokens` new tokens each, no EOS stop,
all submitted at once (so decode steps run at batch --num-prompts). On CPU the ranks of one node
split its cores (TP=2 on 2 cores: 1 thread per rank), so this measures the cost of the split itself
(Gloo all-reduces, the broadcast, two processes) more than any gain; on accelerators each rank has
its own device.

    .venv/bin/python scripts/bench_tp.py [--model DIR | --random] [--tp 2 [3 ...]] [--dtype auto] [--device cpu]

--random builds a SmolLM2-sized random-weight Llama (24 layers, hidden 512, 8 query heads over 4 KV
heads of 64, the default tokenizer) that splits over 2 or 4 ranks; SmolLM2 itself (9 over 3 heads)
splits over 3 or 9.
"""

from __future__ import annotations

import argparse
import pickle
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def workload(tokenizer, n: int, seed: int = 0) -> list[list[int]]:
    from tests.engine.exactness_util import corpus_ids

    rng = random.Random(seed)
    ids = corpus_ids(tokenizer, 2000)
    prompts = []
    for _ in range(n):
        length = rng.randint(64, 256)
        start = rng.randrange(0, len(ids) - length)
        prompts.append(ids[start : start + length])
    return prompts


def measure(args, tp: int) -> dict:
    from npu_serve import LLM, SamplingParams

    llm = LLM(args.model, device=args.device, dtype=args.dtype, tensor_parallel_size=tp, max_model_len=1024,
              max_num_batched_tokens=args.max_num_batched_tokens)
    try:
        executor = llm.engine.executor
        real = executor.execute
        steps: list[tuple[float, int, bool, int]] = []  # seconds, requests, pure decode, message bytes

        def timed(so):
            t0 = time.perf_counter()
            out = real(so)
            if so.scheduled:
                size = getattr(executor, "last_message_bytes", 0) or len(pickle.dumps(so.for_workers(), protocol=5))
                steps.append((time.perf_counter() - t0, len(so.scheduled), so.num_decodes == len(so.scheduled), size))
            return out

        llm.engine.executor.execute = timed
        prompts = workload(llm.tokenizer, args.num_prompts)
        params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
        llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4))  # warm-up (kernels, caches)
        steps.clear()
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params)
        wall = time.perf_counter() - t0
        decode = [s for s in steps if s[2] and s[1] == args.num_prompts]
        return {
            "tp": tp, "wall": wall, "tokens": sum(len(o.outputs[0].token_ids) for o in outs),
            "steps": len(steps), "decode_ms": 1e3 * statistics.median(s[0] for s in decode) if decode else float("nan"),
            "msg_bytes": statistics.median(s[3] for s in decode) if decode else 0,
            "facts": llm.facts, "token_ids": [o.outputs[0].token_ids for o in outs],
        }
    finally:
        llm.shutdown()


def random_model(path: Path, tokenizer_dir: str) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=24,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=64, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def main() -> None:
    import tempfile

    from npu_serve.models import default_model_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--random", action="store_true", help="a SmolLM2-sized random Llama with 8 over 4 heads")
    ap.add_argument("--tp", type=int, nargs="+", default=[2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    if args.random:
        args.model = random_model(Path(tmp.name) / "random-llama-8x4", str(default_model_dir()))
    args.model = args.model or str(default_model_dir())
    rows = [measure(args, 1)] + [measure(args, tp) for tp in args.tp]
    base = rows[0]
    print(f"\nmodel {base['facts'].model_name}, {base['facts'].dtype} on {base['facts'].device}; "
          f"{args.num_prompts} prompts of 64-256 tokens, {args.max_tokens} new tokens each")
    print("| TP | wall s | output tok/s | decode step ms (batch %d) | message bytes/step | tok/s vs TP=1 |" % args.num_prompts)
    print("|---|---|---|---|---|---|")
    for r in rows:
        tps = r["tokens"] / r["wall"]
        print(f"| {r['tp']} | {r['wall']:.1f} | {tps:.1f} | {r['decode_ms']:.1f} | {r['msg_bytes']:,.0f} | "
              f"{tps / (base['tokens'] / base['wall']):.2f}x |")
    for r in rows[1:]:
        same = sum(a == b for a, b in zip(base["token_ids"], r["token_ids"]))
        print(f"TP={r['tp']}: greedy outputs identical to TP=1 for {same} of {args.num_prompts} prompts")


if __name__ == "__main__":
    main()
