"""Prompts: exact lengths with a tokenizer, the stated approximation without one, fresh per salt,
and ShareGPT-style datasets."""

from __future__ import annotations

import json

import pytest

from npu_serve.bench.errors import BenchError
from npu_serve.bench.tokens import TokenCounter
from npu_serve.bench.words import WORDS
from npu_serve.bench.workload import SALT_WORDS, PromptSource, load_dataset, make_prompts, salt_words


@pytest.fixture(scope="module")
def counter(tokenizer_dir):
    return TokenCounter.from_path(str(tokenizer_dir))


def test_every_word_is_one_token_for_the_default_tokenizer(counter):
    # This is what makes the no-tokenizer approximation exact for the default model.
    assert len(set(WORDS)) == len(WORDS) >= 400
    assert all(w.isalpha() and w.islower() for w in WORDS)
    multi = [w for w in WORDS if counter.count(" " + w) != 1 or counter.count(w) != 1]  # inside, and first
    assert not multi


def test_synthetic_prompts_have_exact_lengths_with_a_tokenizer(counter):
    prompts = make_prompts(PromptSource((20, 60)), 30, seed=1, salt="s", counter=counter)
    assert counter.exact
    for p in prompts:
        assert 20 <= p.tokens <= 60
        assert counter.count(p.text) == p.tokens
    assert len({p.tokens for p in prompts}) > 5  # lengths spread over the range


def test_approximation_is_one_token_per_word_and_holds_for_the_default_tokenizer(counter):
    approx = TokenCounter()
    assert not approx.exact and "1 token per" in approx.method
    prompts = make_prompts(PromptSource((50, 50)), 5, seed=2, salt="s", counter=approx)
    for p in prompts:
        assert p.tokens == 50 == len(p.text.split())
        assert counter.count(p.text) == 50


def test_prompts_are_reproducible_per_salt_and_fresh_across_salts():
    c = TokenCounter()
    src = PromptSource((40, 40))
    a = make_prompts(src, 8, seed=0, salt="run-a", counter=c)
    assert a == make_prompts(src, 8, seed=0, salt="run-a", counter=c)
    b = make_prompts(src, 8, seed=0, salt="run-b", counter=c)
    prefix_a, prefix_b = " ".join(salt_words("run-a")), " ".join(salt_words("run-b"))
    assert prefix_a != prefix_b and len(salt_words("x")) == SALT_WORDS
    assert all(p.text.startswith(prefix_a + " ") for p in a)
    assert all(p.text.startswith(prefix_b + " ") for p in b)
    # within a run prompts differ right after the salt, so no request reuses another's cached blocks
    firsts = [p.text.split()[SALT_WORDS:SALT_WORDS + 3] for p in a]
    assert len({tuple(f) for f in firsts}) == len(a)


def test_shorter_than_the_salt_still_fits(counter):
    (p,) = make_prompts(PromptSource((2, 2)), 1, seed=0, salt="s", counter=counter)
    assert p.tokens == 2


def test_sharegpt_jsonl_array_and_prompt_forms(tmp_path, counter):
    rows = [{"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": " first question "},
                               {"from": "gpt", "value": "answer"}]},
            {"conversations": [{"from": "gpt", "value": "no human turn"}]},
            {"prompt": "plain prompt"},
            {"conversation": [{"role": "user", "content": "chat style"}]}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_dataset(jsonl) == ("first question", "plain prompt", "chat style")
    array = tmp_path / "d.json"
    array.write_text(json.dumps(rows))
    assert load_dataset(array) == ("first question", "plain prompt", "chat style")
    prompts = make_prompts(PromptSource(dataset=load_dataset(jsonl)), 6, seed=0, salt="z", counter=counter)
    prefix = " ".join(salt_words("z"))
    assert all(p.text.startswith(prefix + " ") for p in prompts)
    assert {p.text[len(prefix) + 1:] for p in prompts} <= {"first question", "plain prompt", "chat style"}
    assert all(p.tokens == counter.count(p.text) for p in prompts)


def test_bad_datasets_are_refused_clearly(tmp_path):
    with pytest.raises(BenchError, match="cannot read"):
        load_dataset(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json\n')
    with pytest.raises(BenchError, match="line 2 is not valid JSON"):
        load_dataset(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"conversations": [{"from": "gpt", "value": "x"}]}\n')
    with pytest.raises(BenchError, match="no prompts found"):
        load_dataset(empty)


def test_tokenizer_path_errors(tmp_path):
    with pytest.raises(BenchError, match="no tokenizer.json"):
        TokenCounter.from_path(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(BenchError, match="cannot load"):
        TokenCounter.from_path(str(tmp_path))
