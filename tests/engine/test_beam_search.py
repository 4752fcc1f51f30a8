"""Beam search: the same sequences, in the same order, as transformers' generate(num_beams=...), and
every forked block freed.

The tiny random model almost never proposes EOS, so each case also names a likely token (one the
greedy output contains) as an extra stop token (HF: an extra eos_token_id); beams then finish at
different lengths and the length penalty and early stopping rules matter. Torch-free part: random
beam groups with fake candidates against the fake KV memory of test_fork_blocks (forks, drops,
parked beams, preemption, copy-on-write).
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npu_serve import LLM, SamplingParams
from npu_serve.engine.beam_search import BeamGroup, BeamSearch, beam_stop_ids
from npu_serve.engine.request import Request
from npu_serve.engine.scheduler import Scheduler, SchedulerConfig
from tests.engine.test_block_bookkeeping import check_invariants
from tests.engine.test_fork_blocks import FakeKV

EOS = 2


def hf_beams(model, prompt, width, n, max_new, length_penalty, early_stopping, extra_eos):
    from transformers import GenerationConfig

    eos = [EOS] + ([extra_eos] if extra_eos is not None else [])
    cfg = GenerationConfig(num_beams=width, num_return_sequences=n, do_sample=False, max_new_tokens=max_new,
                           length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=eos,
                           pad_token_id=EOS)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
    seqs = []
    for row in out[:, len(prompt):].tolist():
        cut = next((j for j, t in enumerate(row) if t in eos), None)
        seqs.append(row if cut is None else row[: cut + 1])  # running beams never hold a stop id
    return seqs


CASES = [  # (width, n, max_new, length_penalty, early_stopping, stop at greedy token #)
    (3, 3, 10, 1.0, False, 2),
    (4, 4, 12, 0.5, True, 3),
    (2, 2, 9, 2.0, "never", 1),
    (4, 2, 8, 1.0, False, 4),  # best_of 4 beams, 2 returned
    (3, 3, 7, 0.0, "never", None),  # no stop token: every beam runs to max_new
    (5, 3, 10, -0.5, False, 2),
]


@pytest.fixture(scope="module", params=["tiny_llama_dir", "tiny_qwen2_dir"])
def setup(request):
    from transformers import AutoModelForCausalLM

    model_dir = request.getfixturevalue(request.param)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    llm = LLM(str(model_dir), device="cpu", dtype="float32", max_model_len=256, max_num_batched_tokens=24)
    prompts = [llm.tokenizer.encode(t) for t in ("The beam", "Paged attention stores keys and values in blocks",
                                                 "1 2 3", "Bonjour", "def f(x):", "A longer prompt, so that "
                                                 "chunked prefill splits it over several steps of the engine")]
    greedy = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    cases = []
    for prompt, g, (width, n, max_new, lp, es, stop_at) in zip(prompts, greedy, CASES):
        stop = g.outputs[0].token_ids[stop_at] if stop_at is not None else None
        cases.append((prompt, width, n, max_new, lp, es, stop))
    refs = [hf_beams(model, *c) for c in cases]
    return llm, cases, refs


def params_for(width, n, max_new, lp, es, stop):
    return SamplingParams(n=n, best_of=width, use_beam_search=True, temperature=0.0, max_tokens=max_new,
                          length_penalty=lp, early_stopping=es, stop_token_ids=[stop] if stop is not None else None)


def check(outs, cases, refs):
    for i, (out, case, ref) in enumerate(zip(outs, cases, refs)):
        got = [o.token_ids for o in out.outputs]
        assert got == ref, f"case {i} {case[1:]}: {got} != {ref}"
        stop = case[-1]
        for o in out.outputs:
            ends = bool(o.token_ids) and o.token_ids[-1] in (EOS, stop)
            assert o.finish_reason == ("stop" if ends else "length")
            assert o.stop_reason == (stop if ends and o.token_ids[-1] == stop else None)


def test_beam_search_equals_transformers_one_by_one(setup):
    llm, cases, refs = setup
    outs = [llm.generate([c[0]], params_for(*c[1:]))[0] for c in cases]
    check(outs, cases, refs)
    assert any(len({len(o.token_ids) for o in out.outputs}) > 1 for out in outs)  # stops mattered
    assert llm.engine.scheduler.kv.num_used_blocks() == 0


def test_beam_search_in_a_busy_batch_with_few_blocks(setup, request):
    llm, cases, refs = setup
    model_dir = request.getfixturevalue(request.node.callspec.params["setup"])
    small = LLM(str(model_dir), device="cpu", dtype="float32", max_model_len=60, max_num_batched_tokens=16,
                num_kv_blocks=16, block_size=4)
    neighbours = [SamplingParams(temperature=0.8, seed=3, max_tokens=6), SamplingParams(temperature=0, max_tokens=5)]
    outs = small.generate([c[0] for c in cases] + ["noise", "more noise"],
                          [params_for(*c[1:]) for c in cases] + neighbours)
    check(outs[: len(cases)], cases, refs)
    assert small.engine.scheduler.num_preemptions > 0
    assert small.engine.scheduler.kv.num_used_blocks() == 0
    assert all(b.ref_cnt == 0 for b in small.engine.scheduler.kv.pool.blocks[1:])


# -- torch-free: forks, drops and parking under random schedules --------------------------------------
def fake_candidates(req: Request, k: int) -> list[tuple[int, float]]:
    rng = random.Random(hash((tuple(req.prompt_token_ids), tuple(req.output_token_ids))))
    tokens = rng.sample(range(8), k=min(k, 8))
    return sorted(((t, -rng.random() * 3) for t in tokens), key=lambda c: -c[1])


@settings(max_examples=80, deadline=None)
@given(
    groups=st.lists(st.tuples(st.lists(st.integers(0, 7), min_size=1, max_size=20), st.integers(2, 4),
                              st.integers(1, 8), st.sampled_from([True, False, "never"])), min_size=1, max_size=4),
    num_blocks=st.integers(12, 40),
    budget=st.integers(4, 32),
    block_size=st.sampled_from([2, 4]),
)
def test_beam_groups_free_every_block(groups, num_blocks, budget, block_size):
    max_len = (num_blocks - 1) * block_size
    s = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget, max_model_len=max_len,
                                  block_size=block_size, num_blocks=num_blocks))
    kv = FakeKV(block_size, s.requests)
    searches = []
    for g, (prompt, width, max_new, early) in enumerate(groups):
        if len(prompt) + max_new > max_len:
            continue
        p = SamplingParams(n=width, use_beam_search=True, temperature=0, max_tokens=max_new, early_stopping=early)
        p.all_stop_token_ids = {3}
        leader = Request(f"g{g}#0", prompt, p, eos_token_ids=frozenset({3}), parent_id=f"g{g}")
        search = BeamSearch(width, 1.0, early, max_new, beam_stop_ids(p, frozenset({3})))
        group = BeamGroup(f"g{g}", leader, search, width)
        s.add_beam_group(group)
        searches.append(search)
    for i in range(3_000):
        if not s.has_unfinished:
            break
        out = s.schedule()
        kv.step(out)
        cands = {x.request_id: fake_candidates(s.requests[x.request_id], 3 * out.sampling[x.request_id].params.best_of)
                 for x in out.scheduled if x.sample}
        s.update(out, {}, cands)
        check_invariants(s)
    assert not s.has_unfinished and not s.requests and not s.beam_groups
    assert all(search.done and search.finished for search in searches)
    assert s.kv.num_used_blocks() == 0


# -- the algorithm alone against HF, on crafted distributions where stops recur ------------------------
def crafted(seq: list[int]) -> list[tuple[int, float]]:
    """A made-up next-token distribution over tokens 0..7 (3 is the stop token), float32 values."""
    from npu_serve.engine.beam_search import f32

    rng = random.Random(repr(seq))
    # The stop token is often among the best, so beams finish at many lengths.
    return sorted(((t, f32(-rng.uniform(0.1, 1.0) if t == 3 else -rng.uniform(0.05, 3.0))) for t in range(8)),
                  key=lambda c: -c[1])


class CraftedLogProbs:
    """An HF logits processor that replaces the model's log-probs by `crafted` (HF applies
    processors after log_softmax in beam search)."""

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, -1.0e4)
        for row, seq in enumerate(input_ids.tolist()):
            for t, lp in crafted(seq):
                out[row, t] = lp
        return out


@pytest.mark.parametrize("width,max_new,length_penalty,early_stopping,prompt", [
    (2, 6, 1.0, False, [5, 9, 14]), (3, 9, 1.0, False, [5, 9, 14]), (4, 9, 2.0, False, [5, 9, 14]),
    (3, 9, 0.5, True, [5, 9, 14]), (4, 8, -1.0, False, [5, 9, 14]), (3, 9, 2.0, "never", [5, 9, 14]),
    (2, 9, 1.0, "never", [5, 9, 14]), (4, 7, 0.0, True, [5, 9, 14]), (3, 12, 3.0, False, [5, 9, 14]),
    (4, 10, 1.5, "never", [5, 9, 14]),
    # these three stop on the "cannot improve" heuristic before max_new (the search would go on without it)
    (2, 12, 2.0, False, [5, 9, 14]), (3, 12, 1.0, False, [1, 2]), (3, 8, 1.0, False, [1, 2]),
])
def test_algorithm_equals_transformers_on_crafted_scores(tiny_llama_dir, width, max_new, length_penalty,
                                                         early_stopping, prompt):
    from transformers import AutoModelForCausalLM, GenerationConfig, LogitsProcessorList

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    cfg = GenerationConfig(num_beams=width, num_return_sequences=width, do_sample=False, max_new_tokens=max_new,
                           length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=3,
                           pad_token_id=3)
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg,
                            logits_processor=LogitsProcessorList([CraftedLogProbs()]))
    want = []
    for row in hf[:, len(prompt):].tolist():
        want.append(row[: row.index(3) + 1] if 3 in row else row)

    search = BeamSearch(width, length_penalty, early_stopping, max_new, frozenset({3}))
    beams: list[list[int]] = [[]]
    steps = 0
    while not search.done:
        choices = search.step(beams, [crafted(prompt + b) for b in beams])
        beams = [beams[i] + [t] for i, t in choices]
        steps += 1
    assert [h.token_ids for h in search.finished] == want
    assert len({len(h.token_ids) for h in search.finished}) > 1 or steps == max_new


@pytest.mark.parametrize("field,value", [("logit_bias", {5: 10.0}), ("min_tokens", 2), ("presence_penalty", 1.0),
                                         ("frequency_penalty", -1.0), ("repetition_penalty", 1.3)])
def test_logits_transforms_are_refused_with_beam_search(field, value):
    """Beam search ranks by the model's raw log-probabilities; a transform it would not apply is an
    error naming the field, not a silently different result."""
    from npu_serve.errors import InvalidParameter

    with pytest.raises(InvalidParameter) as e:
        SamplingParams(use_beam_search=True, n=2, temperature=0.0, max_tokens=4, **{field: value})
    assert e.value.param == field
