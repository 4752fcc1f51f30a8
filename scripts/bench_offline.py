#!/usr/bin/env python3
"""Offline throughput: transformers generate() (static batches), transformers generate_batch()
(its continuous batching) and npu-serve, on one seeded workload, in one process, same dtype/threads.

  python scripts/bench_offline.py                       # default SmolLM2, CPU, auto dtype
  python scripts/bench_offline.py --model-shape llama-3.2-1b --device cuda --dtype bfloat16 --new-tokens 256
  # generate() gets the whole workload as one batch (issue 12's offline target):
  python scripts/bench_offline.py --num-requests 32 --min-prompt 32 --max-prompt 384 --static-batch 0 \
      --systems generate,npu_serve

Prints output tokens/s for each system and npu-serve's ratio against each baseline. Numbers on a
2-core box are noisy: run it a few times and quote medians.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SHAPES = {  # random-weight models shaped like real ones (for devices without the real weights)
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True),
}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF dir or .gguf (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--model-shape", choices=sorted(SHAPES), default=None, help="random weights of this shape")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--min-prompt", type=int, default=32)
    ap.add_argument("--max-prompt", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--static-batch", type=int, default=16,
                    help="batch size of the generate() baseline; 0: the whole workload as one batch")
    ap.add_argument("--sort-static", action="store_true",
                    help="sort requests by prompt length before cutting static batches (less padding: kinder to "
                         "generate() than a server that batches in arrival order can be)")
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--systems", default="generate,generate_batch,npu_serve")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--omp-wait-policy", default=None, help="PASSIVE or ACTIVE (applied before torch loads)")
    return ap.parse_args()


def build_model_dir(shape: str, tokenizer_dir) -> str:
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2, max_position_embeddings=4096, **SHAPES[shape])
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    path = tempfile.mkdtemp(prefix=f"npu-serve-bench-{shape}-")
    model.save_pretrained(path)
    from transformers import AutoTokenizer

    # Prompts are token ids; the tokenizer only has to exist (ids past its vocabulary decode to "").
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


def workload(args, vocab: int) -> list[list[int]]:
    rng = random.Random(args.seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(args.min_prompt, args.max_prompt))]
            for _ in range(args.num_requests)]


def run_generate(model, prompts, new_tokens, batch_size, device, sort=False):
    import torch
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                           eos_token_id=None)
    produced = 0
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if sort else range(len(prompts))
    with torch.inference_mode():
        for k in range(0, len(order), batch_size):
            batch = [prompts[i] for i in order[k : k + batch_size]]
            width = max(map(len, batch))
            ids = torch.tensor([[0] * (width - len(p)) + p for p in batch], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
            produced += (out.shape[1] - width) * len(batch)
    return produced


def run_generate_batch(model, prompts, new_tokens):
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    results = model.generate_batch(inputs=prompts, generation_config=cfg, progress_bar=False)
    return sum(len(r.generated_tokens) for r in results.values())


def run_npu_serve(llm, prompts, new_tokens):
    from npu_serve import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    outs = llm.generate(prompts, params)
    return sum(len(o.outputs[0].token_ids) for o in outs)


def main():
    args = parse_args()
    import npu_serve.runtime_env as runtime_env

    runtime_env.apply(args.threads, args.omp_wait_policy)
    import torch
    from transformers import AutoModelForCausalLM

    from npu_serve import LLM
    from npu_serve.device import resolve_dtype, resolve_platform
    from npu_serve.models import default_model_dir, resolve_model

    platform = resolve_platform(args.device)
    dtype = resolve_dtype(args.dtype, platform)
    if args.model_shape:
        tok_dir = os.environ.get("NPU_SERVE_TEST_TOKENIZER_DIR") or default_model_dir()
        model_dir = build_model_dir(args.model_shape, tok_dir)
    else:
        model_dir = str(resolve_model(args.model).path)
    systems = args.systems.split(",")
    print(f"device={platform.name} dtype={dtype} threads={torch.get_num_threads()} "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} model={args.model_shape or model_dir}")
    print(f"workload: {args.num_requests} requests, prompts {args.min_prompt}-{args.max_prompt} tokens, "
          f"{args.new_tokens} new tokens each, greedy, no EOS stop")

    from transformers import AutoConfig

    prompts = workload(args, AutoConfig.from_pretrained(model_dir).vocab_size)
    results = {}
    hf = None
    if {"generate", "generate_batch"} & set(systems):
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(platform.torch_device).eval()
    if "npu_serve" in systems:
        llm = LLM(model_dir, device=args.device, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
                  max_num_batched_tokens=args.max_num_batched_tokens)
        run_npu_serve(llm, prompts[:2], 4)  # warm-up
        t = time.perf_counter()
        n = run_npu_serve(llm, prompts, args.new_tokens)
        results["npu-serve"] = (n, time.perf_counter() - t)
        print(f"npu-serve: {n} tokens in {results['npu-serve'][1]:.1f} s", flush=True)
        del llm
    if "generate" in systems:
        run_generate(hf, prompts[:2], 4, 2, platform.torch_device)
        t = time.perf_counter()
        batch = args.static_batch or len(prompts)  # 0: one batch of everything
        n = run_generate(hf, prompts, args.new_tokens, batch, platform.torch_device, args.sort_static)
        order = "length-sorted" if args.sort_static else "arrival order"
        results[f"transformers generate() (batches of {batch}, {order})"] = (n, time.perf_counter() - t)
        print(f"generate(): {n} tokens in {time.perf_counter() - t:.1f} s", flush=True)
    if "generate_batch" in systems:
        t = time.perf_counter()
        n = run_generate_batch(hf, prompts, args.new_tokens)
        results["transformers generate_batch()"] = (n, time.perf_counter() - t)

    print(f"\n{'system':<48} {'tokens':>7} {'seconds':>8} {'tok/s':>8}")
    for name, (n, secs) in results.items():
        print(f"{name:<48} {n:>7} {secs:>8.1f} {n / secs:>8.1f}")
    if "npu-serve" in results:
        ours = results["npu-serve"][0] / results["npu-serve"][1]
        for name, (n, secs) in results.items():
            if name != "npu-serve":
                print(f"npu-serve / {name}: {ours / (n / secs):.2f}x")


if __name__ == "__main__":
    main()
