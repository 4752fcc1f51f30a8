#!/usr/bin/env python3
"""Try every causal-LM architecture the installed transformers ships, as a new user would: a tiny
random-weight float32 model built from its config class (sizes shrunk generically), served by the
engine, greedy output compared with generate() token for token.

  .venv/bin/python scripts/probe_architectures.py [model_type ...] [--tokenizer DIR] [--timeout S]

Prints one line per architecture: `exact` (with the attention features the engine read), `refused`
(UnsupportedModel at engine build, with its reason), `MISMATCH` (served, but other tokens: a bug),
`error` (the engine failed some other way), or `not probed` (no tiny model could be built from
the config alone, or it is a multimodal wrapper whose text model has its own entry). A probe, not
a test: the generic shrinking misses architecture-specific constraints, so `not probed` and
`error` rows need a hand-made config before they say anything about the engine.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import traceback

import npu_serve  # noqa: F401  (thread settings before torch)
import torch

# Sizes set wherever the default config has the field (and nowhere else).
SMALL = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, max_position_embeddings=512, moe_intermediate_size=32, shared_expert_intermediate_size=64,
    num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
    first_k_dense_replace=1, n_group=1, topk_group=1, kv_lora_rank=32, q_lora_rank=32, qk_nope_head_dim=16,
    qk_rope_head_dim=8, v_head_dim=16, n_embd=64, n_layer=2, n_head=4, n_positions=512, d_model=64,
    num_layers=2, num_heads=4, ffn_dim=128, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=128,
    max_window_layers=1, initializer_range=0.1, rotary_dim=8, sliding_window=12,
)
PROMPT_LEN, MAX_NEW = 40, 8


class Timeout(Exception):
    pass


def _tiny_config(config_cls, vocab: int):
    defaults = config_cls().to_dict()
    over = {k: v for k, v in SMALL.items() if k in defaults}
    if "vocab_size" in defaults:
        over["vocab_size"] = vocab
    for key, small in (("pad_token_id", 0), ("bos_token_id", 1), ("eos_token_id", 2)):
        if isinstance(defaults.get(key), int) and defaults[key] >= vocab:
            over[key] = small
    if "kv_lora_rank" in defaults:  # MLA expands the latent to one K/V head per query head
        over["num_key_value_heads"] = over.get("num_attention_heads", 4)
    types = defaults.get("layer_types")
    if types:
        kept = list(types[: over.get("num_hidden_layers", 2)])
        if "full_attention" in types and "full_attention" not in kept:  # hybrids: keep one attention layer
            kept[-1] = "full_attention"
        over["layer_types"] = kept
    return config_cls(**over)


def probe(model_type: str, class_name: str, tok, workdir: str) -> str:
    import transformers
    from transformers import CONFIG_MAPPING, GenerationConfig

    from npu_serve import LLM, SamplingParams
    from npu_serve.errors import UnsupportedModel

    if "ConditionalGeneration" in class_name:
        return "not probed: a multimodal wrapper (its text model is probed under its own entry, if any)"
    model_cls = getattr(transformers, class_name, None)
    if model_cls is None:
        return f"not probed: transformers exports no {class_name}"
    try:
        config = _tiny_config(CONFIG_MAPPING[model_type], len(tok))
        with torch.device("meta"):
            params = sum(p.numel() for p in model_cls(config).parameters())
        if params > 250e6:
            return f"not probed: the generic shrinking leaves {params / 1e6:.0f}M parameters"
        torch.manual_seed(0)
        model = model_cls(config).to(torch.float32).eval()
    except Exception as exc:  # noqa: BLE001 - any config the generic shrinking cannot satisfy
        return f"not probed: could not build a tiny model ({type(exc).__name__}: {str(exc)[:120]})"
    path = os.path.join(workdir, model_type)
    try:
        model.save_pretrained(path)
        tok.save_pretrained(path)
    except Exception as exc:  # noqa: BLE001
        return f"not probed: could not save it ({type(exc).__name__}: {str(exc)[:120]})"
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, min(len(tok), config.get_text_config().vocab_size), (PROMPT_LEN,), generator=gen).tolist()
    try:
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            cfg = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0, eos_token_id=None)
            want = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)[0, PROMPT_LEN:].tolist()
    except Exception as exc:  # noqa: BLE001
        return f"not probed: transformers' own generate() fails ({type(exc).__name__}: {str(exc)[:120]})"
    try:
        llm = LLM(path, device="cpu", dtype="float32", num_kv_blocks=16, max_num_batched_tokens=16, max_model_len=128)
    except UnsupportedModel as exc:
        return f"refused: {exc}"
    except Exception as exc:  # noqa: BLE001
        return f"error at engine build: {type(exc).__name__}: {str(exc)[:200]}"
    features = sorted({f.split(" (")[0] for layer in llm.engine.executor.layers for f in layer.features()})
    try:
        got = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True))
    except Exception as exc:  # noqa: BLE001
        return f"error while serving: {type(exc).__name__}: {str(exc)[:200]}"
    tokens = got[0].outputs[0].token_ids
    note = f" [{', '.join(features)}]" if features else ""
    return f"exact{note}" if tokens == want else f"MISMATCH{note}: engine {tokens} != generate() {want}"


def main() -> None:
    from transformers import AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_types", nargs="*")
    parser.add_argument("--tokenizer", default=os.path.expanduser("~/.cache/npu-serve/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--timeout", type=int, default=180, help="seconds per architecture")
    args = parser.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    names = args.model_types or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)

    def on_alarm(signum, frame):
        raise Timeout()

    signal.signal(signal.SIGALRM, on_alarm)
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            signal.alarm(args.timeout)
            try:
                line = probe(name, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[name], tok, workdir)
            except Timeout:
                line = f"not probed: over {args.timeout} s"
            except Exception as exc:  # noqa: BLE001 - the probe itself must go on
                line = f"error in the probe: {type(exc).__name__}: {exc}"
                traceback.print_exc(file=sys.stderr)
            finally:
                signal.alarm(0)
            print(f"{name}: {line}", flush=True)


if __name__ == "__main__":
    main()
