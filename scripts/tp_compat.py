"""Which architectures split correctly over tensor-parallel ranks with transformers' own plans?

For each architecture, builds a tiny random-weight model (2 layers, 4 query heads over 2 KV heads,
float32, the default model's tokenizer), runs a few greedy prompts through npu-serve at TP=1 and at
TP=2 (Gloo on CPU) and compares tokens and the chosen tokens' logprobs. The allow-list in
npu_serve/distributed/sharding.py (SUPPORTED_MODEL_TYPES) is lifted for the run, so every
architecture gets tried; what it prints is the evidence for that list.

    .venv/bin/python scripts/tp_compat.py [--tp 2] [llama qwen2 ...]

With --tp 4 the tiny models' 2 KV heads are replicated (2 ranks per KV head, distributed/sharding.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def architectures():
    import transformers as T

    moe = dict(num_experts_per_tok=2)
    return {
        "llama": (T.LlamaConfig, dict(head_dim=16)),
        "qwen2": (T.Qwen2Config, {}),
        "qwen3": (T.Qwen3Config, dict(head_dim=16)),
        "mistral": (T.MistralConfig, dict(sliding_window=None)),
        "gemma": (T.GemmaConfig, dict(head_dim=16)),
        "granite": (T.GraniteConfig, {}),
        "glm4": (T.Glm4Config, dict(head_dim=16)),
        "cohere": (T.CohereConfig, {}),
        "starcoder2": (T.Starcoder2Config, dict(sliding_window=None)),
        "olmo2": (T.Olmo2Config, {}),
        "phi3": (T.Phi3Config, {}),
        "mixtral": (T.MixtralConfig, dict(moe, num_local_experts=4, sliding_window=None)),
        "qwen2_moe": (T.Qwen2MoeConfig, dict(moe, num_experts=4, moe_intermediate_size=32,
                                             shared_expert_intermediate_size=32)),
        "qwen3_moe": (T.Qwen3MoeConfig, dict(moe, head_dim=16, num_experts=4, moe_intermediate_size=32)),
        "deepseek_v3": (T.DeepseekV3Config, dict(moe, n_routed_experts=4, moe_intermediate_size=32,
                                                 first_k_dense_replace=1, kv_lora_rank=32, q_lora_rank=32,
                                                 qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_group=1,
                                                 topk_group=1)),
        "gpt2": (T.GPT2Config, dict(n_embd=64, n_layer=2, n_head=4, n_positions=1024)),
    }


def build(name: str, root: Path, tokenizer_dir: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cls, extra = architectures()[name]
    path = root / name
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    kw = dict(COMMON, **extra) if name != "gpt2" else dict(extra, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cls(vocab_size=len(tok), **kw)).to(torch.float32)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def run(model_dir: str, tp: int):
    from npu_serve import LLM, SamplingParams

    prompts = [[5 + i * 7 + j for j in range(20 + 13 * i)] for i in range(4)]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=1)
    with LLM(model_dir, device="cpu", dtype="float32", tensor_parallel_size=tp, distributed_timeout=120) as llm:
        return [o.outputs[0] for o in llm.generate(prompts, params)]


def verdict(one, two) -> str:
    worst = 0.0
    for a, b in zip(one, two):
        for j, (x, y) in enumerate(zip(a.token_ids, b.token_ids)):
            if x != y:
                return f"DIFFERS at token {j}"
            worst = max(worst, abs(a.logprobs[j][x].logprob - b.logprobs[j][y].logprob))
    return f"same (max logprob diff {worst:.1e})" if worst < 1e-5 else f"logprobs differ ({worst:.1e})"


def main() -> None:
    import argparse

    from npu_serve.distributed import sharding
    from npu_serve.models import default_model_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    names = args.names or list(architectures())
    sharding.SUPPORTED_MODEL_TYPES = frozenset(names)  # rank 0 checks the list; try them all
    tokenizer_dir = os.environ.get("NPU_SERVE_TEST_TOKENIZER_DIR") or str(default_model_dir())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            t0 = time.time()
            try:
                path = build(name, Path(tmp), tokenizer_dir)
                one = run(path, 1)
            except Exception as e:  # noqa: BLE001 - a row of the table
                rows.append((name, f"TP=1 fails: {type(e).__name__}: {str(e).splitlines()[0][:110]}"))
                continue
            try:
                rows.append((name, verdict(one, run(path, args.tp))))
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                rows.append((name, f"TP={args.tp} refused/fails: {type(e).__name__}: {str(e).splitlines()[0][:110]}"))
            print(f"{name}: {rows[-1][1]} ({time.time() - t0:.0f} s)", flush=True)
    print(f"\n| model type | TP={args.tp} vs TP=1 through npu-serve (transformers "
          f"{__import__('transformers').__version__}, CPU, Gloo) |\n|---|---|")
    for name, result in rows:
        print(f"| {name} | {result} |")


if __name__ == "__main__":
    main()
