"""Sampling parameters through the whole engine (scheduler, runner, sampler, output processor), on the
tiny model in float32: logprobs and prompt_logprobs against the reference model's log_softmax (with
chunked prefill), truncation knobs that must give the greedy tokens, seeded reproducibility inside
a busy mixed batch, repetition_penalty against transformers' generate(), and the ending rules
(min_tokens, stop tokens, EOS, stop strings, skip_special_tokens)."""

from __future__ import annotations

import pytest
import torch

from npu_serve import LLM, SamplingParams

EOS = 2
IM_START = 1  # "<|im_start|>", a special token of the SmolLM2 tokenizer


@pytest.fixture(scope="module")
def ref_model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    # A 16-token budget chunks every prompt longer than 16 tokens.
    return LLM(str(tiny_llama_dir), device="cpu", dtype="float32", max_model_len=512, max_num_batched_tokens=16)


def ref_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


PROMPT = ("Paged attention keeps keys and values in fixed-size blocks, so requests that share a prefix can "
          "share blocks and nothing is wasted on padding.")


def test_logprobs_equal_the_reference_log_softmax(llm, ref_model):
    params = SamplingParams(temperature=1.0, seed=4, max_tokens=10, ignore_eos=True, logprobs=5, prompt_logprobs=3)
    out = llm.generate([PROMPT], params)[0]
    prompt, gen = out.prompt_token_ids, out.outputs[0].token_ids
    assert len(prompt) > 16  # prefilled over several chunks
    ref = ref_logprobs(ref_model, prompt + gen)
    # generated tokens: the chosen token and the top 5, with ranks
    lps = out.outputs[0].logprobs
    assert len(lps) == len(gen)
    for j, (token, entry) in enumerate(zip(gen, lps)):
        row = ref[len(prompt) - 1 + j]
        assert entry[token].logprob == pytest.approx(row[token].item(), abs=1e-4)
        assert entry[token].rank == int((row > row[token]).sum()) + 1
        top = row.topk(5)
        for value, tid in zip(top.values.tolist(), top.indices.tolist()):
            assert entry[tid].logprob == pytest.approx(value, abs=1e-4)
        assert len(entry) in (5, 6)
    assert out.outputs[0].cumulative_logprob == pytest.approx(sum(lps[j][t].logprob for j, t in enumerate(gen)), abs=1e-4)
    # prompt tokens: None first (nothing predicts it), then log_softmax of the previous position
    plp = out.prompt_logprobs
    assert len(plp) == len(prompt) and plp[0] is None
    for j in range(1, len(prompt)):
        row = ref[j - 1]
        assert plp[j][prompt[j]].logprob == pytest.approx(row[prompt[j]].item(), abs=1e-4)
        top = row.topk(3)
        assert [plp[j][t].logprob for t in top.indices.tolist()] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_prompt_logprobs_ignore_the_prefix_cache(llm):
    params = SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=0)
    first = llm.generate([PROMPT], params)[0].prompt_logprobs
    again = llm.generate([PROMPT], params)[0].prompt_logprobs  # every full block is cached by now
    assert None not in again[1:]
    assert [next(iter(d.values())).logprob for d in again[1:]] == pytest.approx(
        [next(iter(d.values())).logprob for d in first[1:]], abs=1e-5)


@pytest.mark.parametrize("knob", [dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)])
def test_truncation_to_one_token_is_greedy(llm, knob):
    prompts = [PROMPT, "Hello", "1, 2, 3,"]
    greedy = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    sampled = llm.generate(prompts, SamplingParams(temperature=1.3, max_tokens=12, ignore_eos=True, **knob))
    assert [o.outputs[0].token_ids for o in sampled] == [o.outputs[0].token_ids for o in greedy]


def test_seeded_request_is_the_same_alone_and_in_a_busy_batch(llm):
    seeded = SamplingParams(temperature=0.9, top_p=0.95, seed=77, max_tokens=16, ignore_eos=True,
                            presence_penalty=0.3)
    alone = llm.generate(["The seed decides"], seeded)[0].outputs[0].token_ids
    prompts = [PROMPT, "The seed decides", "x" * 40, "Short", PROMPT[:50], "Another one"]
    params = [SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True), seeded,
              SamplingParams(temperature=0, max_tokens=9), SamplingParams(temperature=0.5, seed=1, max_tokens=30),
              SamplingParams(n=3, temperature=1.2, max_tokens=7), SamplingParams(temperature=0.7, top_k=5, max_tokens=4)]
    busy = llm.generate(prompts, params)
    assert busy[1].outputs[0].token_ids == alone


def test_repetition_penalty_equals_transformers(llm, ref_model):
    from transformers import GenerationConfig

    prompt = llm.tokenizer.encode("the the the cat sat on the mat and the cat")
    ids = torch.tensor([prompt])
    config = GenerationConfig(max_new_tokens=16, do_sample=False, repetition_penalty=1.7, eos_token_id=None,
                              pad_token_id=EOS)
    with torch.inference_mode():
        want = ref_model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)[0, len(prompt):]
    got = llm.generate([prompt], SamplingParams(temperature=0, repetition_penalty=1.7, max_tokens=16, ignore_eos=True))
    plain = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    assert got[0].outputs[0].token_ids == want.tolist()
    assert got[0].outputs[0].token_ids != plain[0].outputs[0].token_ids  # the penalty changed something


def test_min_tokens_holds_back_eos(llm):
    force_eos = {EOS: 100.0}
    out = llm.generate(["Stop now"], SamplingParams(temperature=0, max_tokens=10, min_tokens=4, logit_bias=force_eos))
    o = out[0].outputs[0]
    assert len(o.token_ids) == 5 and o.token_ids[-1] == EOS and EOS not in o.token_ids[:-1]
    assert o.finish_reason == "stop" and o.stop_reason is None
    assert "<|im_end|>" not in o.text


def test_stop_token_ids_name_the_token_after_min_tokens(llm):
    base = llm.generate(["abc"], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0].outputs[0].token_ids
    target = base[1]
    out = llm.generate(["abc"], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, stop_token_ids=[target],
                                               min_tokens=2 if target not in base[2:4] else 1))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == target and out.token_ids[-1] == target
    capped = llm.generate(["abc"], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True,
                                                  stop_token_ids=[12345]))[0].outputs[0]
    assert capped.finish_reason == "length" and capped.stop_reason is None and len(capped.token_ids) == 3


def test_skip_special_tokens(llm):
    bias = {IM_START: 100.0}  # the model now emits <|im_start|> every step
    skipped = llm.generate(["Hi"], SamplingParams(temperature=0, max_tokens=3, logit_bias=bias))[0].outputs[0]
    kept = llm.generate(["Hi"], SamplingParams(temperature=0, max_tokens=3, logit_bias=bias,
                                               skip_special_tokens=False))[0].outputs[0]
    assert skipped.token_ids == kept.token_ids == [IM_START] * 3
    assert skipped.text == "" and kept.text.count("<|im_start|>") == 3


def test_include_stop_str_in_output(llm):
    base = llm.generate(["The cache"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    stop = base.text[3:6]
    cut = base.text.index(stop)
    for include, want in ((False, base.text[:cut]), (True, base.text[: cut + len(stop)])):
        o = llm.generate(["The cache"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop=[stop],
                                                       include_stop_str_in_output=include))[0].outputs[0]
        assert o.text == want and o.finish_reason == "stop" and o.stop_reason == stop
