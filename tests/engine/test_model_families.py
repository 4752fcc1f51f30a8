"""Every model family users run is exact through the engine: tiny random-weight float32 models of 16
architectures (tests/engine/model_families.py), greedy output equal to transformers' generate()
token for token, with prompts longer than every sliding window going through ONE engine per model
with chunked prefill (a token budget below every prompt), preemption (too few KV blocks for the
batch) and prefix-cache hits (a shared prefix), each asserted to have happened.

Each attention feature a family uses (sliding window, logit softcap, sinks) is shown to matter:
generate() with the feature switched off gives other tokens, so equality proves the engine
implements it rather than that the feature is too weak to show. A failed comparison names the
smallest top-1/top-2 logit gap generate() met (a near-tie would show there). For the MoE families
the test also shows that transformers' routing picks the same experts for a token whether its MoE
block runs it alone or among other tokens, as the engine's packed steps do.
"""

from __future__ import annotations

import pytest
import torch

from npu_serve import LLM, SamplingParams
from npu_serve.worker import fast_decoder
from npu_serve_kernels.decoder import cpu as decoder_ext
from tests.engine.exactness_util import corpus_ids
from tests.engine.model_families import BY_NAME, FAMILIES

MAX_NEW = 16
BLOCK = 16
PREFIX = 40  # shared by every prompt: 2 full blocks for the prefix cache
SUFFIXES = (8, 14, 21, 27, 12)  # prompts of 48..67 tokens: longer than every window (<= 20)
MOE = ["qwen2_moe", "qwen3_moe", "deepseek_v3", "glm4_moe", "gpt_oss"]


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def prompts(tok) -> list[list[int]]:
    ids = corpus_ids(tok, 400)
    prefix, rest = ids[:PREFIX], ids[PREFIX:]
    out, at = [], 0
    for n in SUFFIXES:
        out.append(prefix + rest[at : at + n])
        at += n
    return out


def greedy(model, prompts: list[list[int]]) -> tuple[list[list[int]], float]:
    """transformers' generate(), one prompt at a time (no padding), no EOS stop; and the smallest gap
    between the best and second-best logit over every chosen token (how close greedy came to a tie)."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0, eos_token_id=None,
                              output_scores=True, return_dict_in_generate=True)
    outs, margin = [], float("inf")
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
            outs.append(gen.sequences[0, len(p):].tolist())
            for scores in gen.scores:
                top = scores[0].float().topk(2).values
                margin = min(margin, float(top[0] - top[1]))
    return outs, margin


def _engine_facts(llm: LLM):
    runner = llm.engine.executor
    return runner.layers, runner.kv_caches, runner.spec


@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_greedy_equals_generate_through_one_engine(name, tok, prompts, tmp_path):
    family = BY_NAME[name]
    model = family.build(len(tok))
    want, margin = greedy(model, prompts)
    for feature in family.switches:  # the feature changes transformers' own output (on 3 prompts, to save time)
        without, _ = greedy(family.build(len(tok), off=feature), prompts[:3])
        assert without != want[:3], f"{name}: switching {feature} off changes nothing; the test would prove nothing"

    path = tmp_path / name
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    llm = LLM(str(path), device="cpu", dtype="float32", block_size=BLOCK, max_num_batched_tokens=24,
              num_kv_blocks=12, max_model_len=128)
    layers, caches, spec = _engine_facts(llm)
    # The families the C++ decoder layers take run through them here (worker/fast_decoder.py).
    fast_expected = family.model_cls in fast_decoder.FAMILIES and decoder_ext.available()
    assert (llm.engine.executor.fast is not None) == fast_expected
    assert tuple(layer.sliding_window for layer in layers) == family.windows
    for layer, (key_cache, value_cache) in zip(layers, caches):
        assert key_cache.shape == (12, BLOCK, layer.num_kv_heads, layer.head_dim)
        assert value_cache.shape == (12, BLOCK, layer.num_kv_heads, layer.v_head_dim)
    assert spec.bytes_per_block == sum(k.nbytes + v.nbytes for k, v in caches) // 12

    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    first = llm.generate(prompts[:1], params)  # computes the shared prefix once
    rest = llm.generate(prompts[1:], params)  # hits it, and the batch outgrows 11 blocks
    got = [o.outputs[0].token_ids for o in first + rest]
    sched = llm.engine.scheduler
    assert sched.num_prefix_hit_tokens >= (len(prompts) - 1) * (PREFIX // BLOCK) * BLOCK
    assert sched.num_preemptions > 0
    assert sched.kv.num_used_blocks() == 0
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"{name} prompt {i}: engine {g} != generate() {w} (closest greedy margin {margin:.3g})"


def _moe_blocks(model) -> list[torch.nn.Module]:
    """The sparse MoE blocks: modules whose `experts` child is transformers' experts module (5.x calls
    `experts(hidden_states, top_k_index, top_k_weights)` in every family tested here)."""
    return [m for m in model.modules() if type(getattr(m, "experts", None)).__name__.endswith("Experts")]


def _block_inputs(model, blocks, ids: torch.Tensor) -> list[torch.Tensor]:
    """Each MoE block's input hidden states [T, hidden] when `ids` runs through the model alone."""
    seen: list[torch.Tensor] = []
    hooks = [b.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
             for b in blocks]
    try:
        model(ids[None])
    finally:
        for h in hooks:
            h.remove()
    return seen


def _run_block(block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's output for tokens x [T, hidden] (as one sequence), and the experts it chose per token."""
    chosen: list[torch.Tensor] = []
    hook = block.experts.register_forward_pre_hook(lambda _m, args: chosen.append(args[1].reshape(x.shape[0], -1)))
    try:
        out = block(x[None])
    finally:
        hook.remove()
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(x.shape), chosen[0].sort(-1).values


@pytest.mark.parametrize("name", MOE)
def test_moe_routing_is_the_same_alone_and_in_a_bigger_batch(name, tok):
    """The engine runs each MoE block over every token of a step at once, so a token's route must not
    depend on how many others share the step. Each block's real input for a sequence, alone and
    packed between two others (another M for every GEMM, other tokens per expert): the same experts
    for every token, and outputs equal to float32 rounding (1e-5 of their scale)."""
    family = BY_NAME[name]
    model = family.build(len(tok))
    blocks = _moe_blocks(model)
    assert blocks, f"{name}: no MoE block found"
    gen = torch.Generator().manual_seed(5)
    a, b, c = (torch.randint(3, len(tok), (n,), generator=gen) for n in (50, 70, 9))
    with torch.inference_mode():
        inputs = [_block_inputs(model, blocks, seq) for seq in (a, b, c)]
        for i, block in enumerate(blocks):
            xa, xb, xc = (per_seq[i] for per_seq in inputs)
            out_a, experts_a = _run_block(block, xa)
            out_p, experts_p = _run_block(block, torch.cat([xb, xa, xc]))
            sl = slice(len(xb), len(xb) + len(xa))
            assert torch.equal(experts_a, experts_p[sl]), f"{name} MoE block {i}: a token changes experts in a batch"
            noise = float((out_a - out_p[sl]).abs().max())
            assert noise <= 1e-5 * float(out_a.abs().max()), (name, i, noise)
