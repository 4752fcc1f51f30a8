"""Helpers for the exactness tests: a seeded prompt set and the transformers generate() oracle."""

from __future__ import annotations

import os
import random

import torch

TEST_DEVICE = os.environ.get("NPU_SERVE_TEST_DEVICE", "cpu")

_TEXT = (
    "The history of computing is a story of ideas made real. Charles Babbage designed the analytical engine; "
    "Ada Lovelace wrote what many call the first program. 在计算机科学中，缓存是一种存储数据的组件。 "
    "def quicksort(xs):\n    if len(xs) <= 1:\n        return xs\n    pivot = xs[0]\n    return quicksort([x for x in xs[1:] if x < pivot]) + [pivot]\n"
    "Les grands modèles de langage prédisent le mot suivant. Paged attention stores keys and values in fixed-size "
    "blocks so that memory is not wasted on padding, and requests that share a prefix can share blocks. "
)


def corpus_ids(tokenizer, min_len: int = 4000) -> list[int]:
    ids: list[int] = []
    i = 0
    while len(ids) < min_len:
        ids += tokenizer.encode(f"[{i}] " + _TEXT, add_special_tokens=False)
        i += 1
    return ids


def make_cases(tokenizer, n: int = 24, max_len: int = 600, seed: int = 0) -> list[tuple[list[int], int, bool]]:
    """(prompt ids, max_tokens, ignore_eos): lengths from 1 to max_len, varied completion lengths."""
    rng = random.Random(seed)
    ids = corpus_ids(tokenizer, max_len * 3)
    lengths = [1, 2, max_len] + [rng.randint(3, max_len) for _ in range(n - 3)]
    cases = []
    for k, length in enumerate(lengths):
        start = rng.randrange(0, len(ids) - length)
        cases.append((ids[start : start + length], rng.randint(1, 24), k % 2 == 0))
    return cases


def shared_prefix_cases(tokenizer, n: int = 8, prefix_len: int = 300) -> list[tuple[list[int], int, bool]]:
    ids = corpus_ids(tokenizer, prefix_len + 400)
    prefix = ids[:prefix_len]
    rng = random.Random(1)
    return [(prefix + ids[prefix_len + 7 * k : prefix_len + 7 * k + rng.randint(1, 40)], 12, True) for k in range(n)]


def reference_outputs(model_dir, cases, device: str = TEST_DEVICE) -> list[list[int]]:
    """Greedy transformers generate(), one prompt at a time (no padding), float32."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    eos = model.generation_config.eos_token_id
    out = []
    with torch.inference_mode():
        for prompt, max_tokens, ignore_eos in cases:
            ids = torch.tensor([prompt], device=device)
            # A fresh config, so nothing from the model's own generation_config (sampling, EOS) leaks in.
            config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, pad_token_id=0,
                                      eos_token_id=None if ignore_eos else eos)
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
            gen = gen[0, len(prompt):].tolist()
            if not ignore_eos:
                eos_set = {eos} if isinstance(eos, int) else set(eos)
                for j, t in enumerate(gen):
                    if t in eos_set:
                        gen = gen[: j + 1]
                        break
            out.append(gen)
    return out


def params_for(case):
    from npu_serve import SamplingParams

    _, max_tokens, ignore_eos = case
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
