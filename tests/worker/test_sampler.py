"""Sampler and logits processors against straightforward references (transformers' own processors
where one exists, plain loops elsewhere), on random logits with fixed seeds; no model needed."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import npu_serve.worker.sampler as sampler_mod
from npu_serve.sampling_params import SamplingParams
from npu_serve.worker.logits_processors import process_logits
from npu_serve.worker.sampler import Sampler, SamplingRow, gather_logprobs

V = 64
EOS = 2


def row(prompt=(), output=(), generator=None, **params) -> SamplingRow:
    p = SamplingParams(**params)
    p.all_stop_token_ids = {EOS}
    return SamplingRow(p, list(prompt), list(output), generator)


def rand_ids(gen: torch.Generator, n: int) -> list[int]:
    return torch.randint(0, V, (n,), generator=gen).tolist()


def reference_penalties(logits: torch.Tensor, r: SamplingRow) -> torch.Tensor:
    """One row, done the obvious way: bias, then HF repetition penalty, then OpenAI's formula."""
    p = r.params
    out = logits.clone()
    for tok, bias in (p.logit_bias or {}).items():
        if 0 <= tok < V:
            out[tok] += max(-100.0, min(100.0, bias))
    ids = torch.tensor([r.prompt_token_ids + r.output_token_ids], dtype=torch.long)
    if p.repetition_penalty != 1.0 and ids.numel():
        out = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, out[None])[0]
    for tok in set(r.output_token_ids):
        count = r.output_token_ids.count(tok)
        out[tok] -= p.frequency_penalty * count + p.presence_penalty
    return out


def reference_warpers(logits: torch.Tensor, r: SamplingRow) -> torch.Tensor:
    p = r.params
    scores, ids = logits[None].clone(), torch.zeros(1, 1, dtype=torch.long)
    scores = TemperatureLogitsWarper(p.temperature)(ids, scores)
    if p.top_k > 0:
        scores = TopKLogitsWarper(p.top_k)(ids, scores)
    if p.top_p < 1.0:
        scores = TopPLogitsWarper(p.top_p)(ids, scores)
    if p.min_p > 0.0:
        scores = MinPLogitsWarper(p.min_p)(ids, scores)
    return scores[0]


def assert_same_logits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], atol=1e-5, rtol=0)


def penalty_rows(gen: torch.Generator) -> list[SamplingRow]:
    prompt, output = rand_ids(gen, 30), rand_ids(gen, 25)
    return [
        row(prompt, output, temperature=0.0, repetition_penalty=1.3),
        row(prompt, output, temperature=1.0, repetition_penalty=0.7, presence_penalty=0.5),
        row(prompt, output, temperature=0.0, frequency_penalty=1.5, presence_penalty=-0.8),
        row(prompt, [], temperature=1.0, repetition_penalty=1.9, frequency_penalty=2.0),
        row(prompt, output, temperature=0.0),  # nothing to apply
        row(prompt, output, temperature=1.0, logit_bias={3: 5.0, 7: -150.0, V + 10: 1.0}, frequency_penalty=-0.4),
        row([], output, temperature=0.0, repetition_penalty=1.5, logit_bias={0: 150.0}),
    ]


def test_penalties_and_logit_bias_match_reference():
    gen = torch.Generator().manual_seed(0)
    rows = penalty_rows(gen)
    logits = torch.randn(len(rows), V, generator=gen) * 3
    raw = logits.clone()
    got = process_logits(logits, rows)
    assert torch.equal(logits, raw), "process_logits must not modify the caller's logits"
    for i, r in enumerate(rows):
        assert_same_logits(got[i], reference_penalties(raw[i], r))
    assert not torch.equal(got, raw)


TRUNCATION = [
    dict(temperature=0.7),
    dict(temperature=1.3, top_k=5),
    dict(temperature=1.0, top_p=0.8),
    dict(temperature=0.5, min_p=0.1),
    dict(temperature=0.9, top_k=10, top_p=0.9, min_p=0.05),
    dict(temperature=2.0, top_k=V + 100, top_p=0.5),
    dict(temperature=1.0, top_k=1),
]


def test_truncation_matches_transformers_warpers():
    gen = torch.Generator().manual_seed(1)
    rows = [row(**kw) for kw in TRUNCATION]
    logits = torch.randn(len(rows), V, generator=gen) * 2
    got = process_logits(logits, rows)
    for i, r in enumerate(rows):
        assert_same_logits(got[i], reference_warpers(logits[i], r))


def test_top_p_beyond_the_first_candidates_and_top_k_ties_match_transformers():
    vocab = 5000  # larger than the 256 top_p candidates tried first
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(4, vocab, generator=gen) * torch.tensor([[0.1], [6.0], [1.0], [0.5]])
    logits[3, :10] = logits[3].max() + 1.0  # ten tokens tied for first place
    rows = [
        row(temperature=1.0, top_p=0.9),  # flat: the nucleus holds thousands of tokens
        row(temperature=1.0, top_p=0.5),  # peaked: a few tokens
        row(temperature=0.8, top_k=600, top_p=0.97),
        row(temperature=1.0, top_k=3),  # ties at the k-th are all kept
    ]
    got = process_logits(logits, rows)
    for i, r in enumerate(rows):
        assert_same_logits(got[i], reference_warpers(logits[i], r))
    kept = torch.isfinite(got).sum(-1).tolist()
    assert kept[0] > 2000 and kept[1] < 256 and kept[3] == 10
    # A row without top_p next to a peaked top_p row (only 256 candidates looked at) keeps everything.
    mixed = process_logits(logits[:2].flip(0), [rows[1], row(temperature=1.0)])
    assert torch.isfinite(mixed[1]).all()


def test_full_chain_matches_reference_and_batching_does_not_change_rows():
    gen = torch.Generator().manual_seed(2)
    prompt, output = rand_ids(gen, 20), rand_ids(gen, 20)
    rows = [
        row(prompt, output, temperature=0.8, top_k=12, top_p=0.85, min_p=0.02, repetition_penalty=1.2, presence_penalty=0.3),
        row(prompt, output[:3], temperature=0.0, frequency_penalty=0.9, min_tokens=5, stop_token_ids=[9]),
        row(prompt, output, temperature=1.5, min_p=0.2, logit_bias={11: 4.0}),
    ]
    logits = torch.randn(len(rows), V, generator=gen) * 2
    batched = process_logits(logits, rows)
    for i, r in enumerate(rows):
        want = reference_penalties(logits[i], r)
        if len(r.output_token_ids) < r.params.min_tokens:
            want[[EOS, 9]] = float("-inf")
        if r.params.temperature > 0:
            want = reference_warpers(want, r)
        assert_same_logits(batched[i], want)
        assert torch.equal(process_logits(logits[i : i + 1], [r])[0], batched[i])


@pytest.mark.parametrize("kw", [dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)])
def test_extreme_truncation_gives_the_greedy_token(kw):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    logits = torch.randn(32, V, generator=gen) * 0.5  # flat-ish: a real draw would rarely hit argmax
    rows = [row(temperature=1.5, **kw) for _ in range(32)]
    assert Sampler()(logits, rows).token_ids == logits.argmax(-1).tolist()
    # Sanity: without the truncation the same logits do not sample the argmax everywhere.
    free = Sampler()(logits, [row(temperature=1.5) for _ in range(32)]).token_ids
    assert free != logits.argmax(-1).tolist()


def test_greedy_batch_takes_the_single_argmax_fast_path(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("fast path must not process logits")

    monkeypatch.setattr(sampler_mod, "process_logits", boom)
    logits = torch.randn(64, V, generator=torch.Generator().manual_seed(4))
    rows = [row([1, 2, 3], [4, 5], temperature=0.0) for _ in range(64)]
    out = Sampler()(logits, rows)
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.logprobs == [None] * 64


def test_greedy_rows_see_penalties():
    logits = torch.zeros(1, V)
    logits[0, 5], logits[0, 6] = 3.0, 2.0
    out = Sampler()(logits, [row([], [5, 5], temperature=0.0, frequency_penalty=1.0)])
    assert out.token_ids == [6]


def test_seeded_row_is_identical_alone_and_in_a_batch():
    steps, seed = 12, 1234
    step_gen = torch.Generator().manual_seed(5)
    mine = [torch.randn(V, generator=step_gen) for _ in range(steps)]
    others = [torch.randn(5, V, generator=step_gen) for _ in range(steps)]
    kw = dict(temperature=1.2, top_p=0.95, min_p=0.01, seed=seed)

    def alone(s: int) -> list[int]:
        g, toks = torch.Generator().manual_seed(s), []
        for t in range(steps):
            toks += Sampler()(mine[t][None], [row(generator=g, **kw)]).token_ids
        return toks

    g = torch.Generator().manual_seed(seed)
    other_gens = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(seed)]
    batched = []
    torch.manual_seed(99)
    for t in range(steps):
        rows = [
            row(temperature=1.0),  # unseeded, global RNG
            row(generator=other_gens[0], temperature=0.8, top_k=20, seed=7),
            row(generator=g, **kw),
            row(temperature=0.0, repetition_penalty=1.2, output=[1, 2]),
            row(generator=other_gens[1], temperature=1.0, seed=seed),  # same seed, other params
            row(temperature=1.1, logprobs=2),
        ]
        logits = torch.cat([others[t][:2], mine[t][None], others[t][2:]])
        batched.append(Sampler()(logits, rows).token_ids[2])
    assert alone(seed) == batched
    assert len(set(batched)) > 3, "the seeded row should actually be sampling"
    assert alone(seed + 1) != batched


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


CHI2_DF9_ALPHA_1E3 = 27.877
CHI2_DF4_ALPHA_1E3 = 18.467


@pytest.mark.parametrize("seeded", [False, True])
def test_sampled_frequencies_match_softmax(seeded):
    draws, vocab = 20000, 10
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(6)) * 1.2
    probs = logits.softmax(-1)
    torch.manual_seed(6)
    g = torch.Generator().manual_seed(6) if seeded else None
    rows = [row(generator=g, temperature=1.0) for _ in range(draws)]
    tokens = Sampler()(logits.expand(draws, vocab).contiguous(), rows).token_ids
    counts = torch.bincount(torch.tensor(tokens), minlength=vocab).float()
    assert chi_square(counts, probs) < CHI2_DF9_ALPHA_1E3
    # The same test rejects wrong distributions: most/least likely swapped, uniform, temperature 1.5.
    swapped = probs.clone()
    hi, lo = int(probs.argmax()), int(probs.argmin())
    swapped[hi], swapped[lo] = probs[lo], probs[hi]
    for wrong in (swapped, torch.full((vocab,), 1 / vocab), (logits / 1.5).softmax(-1)):
        assert chi_square(counts, wrong) > CHI2_DF9_ALPHA_1E3


def test_sampled_frequencies_match_truncated_softmax():
    draws, vocab, k = 20000, 10, 5
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(8))
    torch.manual_seed(8)
    rows = [row(temperature=0.7, top_k=k) for _ in range(draws)]
    tokens = torch.tensor(Sampler()(logits.expand(draws, vocab).contiguous(), rows).token_ids)
    keep = logits.topk(k).indices
    assert set(tokens.tolist()) <= set(keep.tolist())
    counts = torch.bincount(tokens, minlength=vocab).float()[keep]
    assert chi_square(counts, (logits[keep] / 0.7).softmax(-1)) < CHI2_DF4_ALPHA_1E3
    assert chi_square(counts, logits[keep].softmax(-1)) > CHI2_DF4_ALPHA_1E3  # temperature ignored


def test_min_tokens_masks_eos_and_stop_ids():
    logits = torch.zeros(3, V)
    logits[:, EOS], logits[:, 9], logits[:, 4] = 10.0, 9.0, 8.0
    rows = [
        row([1], [7], temperature=0.0, min_tokens=3, stop_token_ids=[9]),
        row([1], [7, 7, 7], temperature=0.0, min_tokens=3, stop_token_ids=[9]),
        row([1], [], temperature=0.0, ignore_eos=True),  # ignore_eos leaves logits alone
    ]
    assert Sampler()(logits, rows).token_ids == [4, EOS, EOS]
    sampled = Sampler()(logits[:1].expand(200, V).contiguous(), [row([1], [], min_tokens=2, stop_token_ids=[9])] * 200)
    assert not {EOS, 9} & set(sampled.token_ids)


def check_logprobs(lp, raw_row: torch.Tensor, token: int, num_top: int) -> None:
    ref = torch.log_softmax(raw_row, -1)
    assert lp.token_id == token
    assert abs(lp.logprob - float(ref[token])) <= 1e-6
    assert lp.rank == 1 + int((ref > ref[token]).sum())
    order = ref.argsort(descending=True)
    assert lp.top_ids == order[:num_top].tolist()
    torch.testing.assert_close(torch.tensor(lp.top_logprobs), ref[order[:num_top]], atol=1e-6, rtol=0)


def test_logprobs_are_log_softmax_of_raw_logits():
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(4, V, generator=gen) * 2
    forced = int(logits[0].argsort()[V // 2])  # a mid-ranked token, made certain by logit_bias
    rows = [
        row(temperature=0.0, logprobs=3, logit_bias={forced: 100.0}),
        row(temperature=0.9, top_p=0.9, logprobs=5, output=[1, 2, 3], presence_penalty=1.0),
        row(temperature=0.0),
        row(temperature=0.0, logprobs=0),
    ]
    out = Sampler()(logits, rows)
    assert out.token_ids[0] == forced
    check_logprobs(out.logprobs[0], logits[0], forced, 3)
    assert out.logprobs[0].rank == V - V // 2  # ranked on the raw logits, not the biased ones
    check_logprobs(out.logprobs[1], logits[1], out.token_ids[1], 5)
    assert out.logprobs[2] is None
    check_logprobs(out.logprobs[3], logits[3], out.token_ids[3], 0)
    assert out.logprobs[3].rank == 1 and out.logprobs[3].top_ids == []


def test_gather_logprobs_for_many_positions():
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(300, V, generator=gen) * 3  # more rows than one chunk
    targets = torch.randint(0, V, (300,), generator=gen)
    got = gather_logprobs(logits, targets, num_top=4)
    assert len(got) == 300
    for m in (0, 1, 255, 256, 299):
        check_logprobs(got[m], logits[m], int(targets[m]), 4)
    assert [g.token_id for g in gather_logprobs(logits[:3], targets[:3].tolist(), 0)] == targets[:3].tolist()
    assert math.isclose(sum(math.exp(x) for x in torch.log_softmax(logits[0], -1).tolist()), 1.0, rel_tol=1e-5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        Sampler()(torch.zeros(2, V), [row()])
    with pytest.raises(ValueError):
        gather_logprobs(torch.zeros(2, V), [1], 1)
