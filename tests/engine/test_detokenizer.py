"""IncrementalDetokenizer against whole-sequence decoding with the real SmolLM2 tokenizer.

The oracle is always the tokenizer decoding everything at once (`tokenizer.decode`), never our own
code: the incremental text must end up equal to it, and every intermediate text must be a prefix
of it that holds no half character and no piece of a stop string.
"""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npu_serve.engine.detokenizer import IncrementalDetokenizer, detokenize_all
from npu_serve.sampling_params import SamplingParams

REPLACEMENT = "\ufffd"

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "中文测试：今天天气很好，我们去公园散步吧。",
    "日本語のテキストとカタカナ、ひらがな。",
    "Emoji: 😀👍🏽🎉 and a family 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵.",
    "Accents: café, naïve, Ångström, señor, Œuvre, ß, ğ, ł, ř.",
    "Combining: e\u0301 a\u0308 n\u0303; Arabic: مرحبا بالعالم; Hebrew: שלום",
    "def f(x):\n    return {'a': [x ** 2, \"\\n\"]}  # comment\n\tif x != 0: pass\n",
    "Math ∑∫√∞ ≤ ≥ ≠ and box ┌─┐ and music 𝄞 and old 𐍈 text.",
    "   leading spaces, double  spaces,\n\nnew lines\r\n and tabs\t\tend  ",
]


@pytest.fixture(scope="module")
def tok(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def prompt_ids(tok):
    """A chat prompt as the server builds it: it ends in '<|im_start|>assistant\\n'."""
    messages = [{"role": "user", "content": "Say something."}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def feed(tok, prompt, output_ids, params, chunks=None):
    """Feed `output_ids` (one at a time, or in `chunks` sizes) and check the streaming invariants.

    Returns (final text, stop string or None, the texts shown after each step, steps fed).
    """
    detok = IncrementalDetokenizer(tok, prompt, params)
    shown, stop, pos = [], None, 0
    sizes = chunks or [1] * len(output_ids)
    for size in sizes:
        if pos >= len(output_ids):
            break
        stop = detok.update(output_ids[pos : pos + size])
        pos += size
        current = detok.text(finished=stop is not None)
        assert REPLACEMENT not in current or REPLACEMENT in tok.decode(output_ids)
        if shown:
            assert current.startswith(shown[-1]), "shown text must only grow"
        shown.append(current)
        if stop is not None:
            break
    final = detok.text(finished=True)
    for s in shown:
        assert final.startswith(s)
    return final, stop, shown, pos


def test_final_text_equals_whole_decode(tok, prompt_ids):
    params = SamplingParams()
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        final, stop, shown, _ = feed(tok, prompt_ids, ids, params)
        assert stop is None
        assert final == tok.decode(ids, skip_special_tokens=True) == text
        assert REPLACEMENT not in "".join(shown)


def _split_chars(tok):
    """Characters of TEXTS whose UTF-8 bytes the tokenizer spreads over more than one token."""
    found = {}
    for text in TEXTS:
        for ch in set(text):
            ids = tok.encode(ch, add_special_tokens=False)
            if len(ids) > 1 and any(REPLACEMENT in tok.decode([i]) for i in ids):
                found[ch] = ids
    return found


def test_character_split_over_tokens_is_held_back(tok, prompt_ids):
    split = _split_chars(tok)
    assert "😀" in split and len(split) >= 3, f"expected multi-token characters, got {sorted(split)}"
    for ch, ids in split.items():
        text_ids = tok.encode("ab", add_special_tokens=False) + ids
        detok = IncrementalDetokenizer(tok, prompt_ids, SamplingParams())
        for i, token in enumerate(text_ids):
            detok.update([token])
            shown = detok.text(False)
            assert REPLACEMENT not in shown
            if i < len(text_ids) - 1:
                assert ch not in shown
        assert detok.text(False) == "ab" + ch == detok.text(True)


def test_unfinished_character_at_end_appears_in_final_text(tok, prompt_ids):
    ids = tok.encode("x😀", add_special_tokens=False)[:-1]  # cut inside the emoji's bytes
    detok = IncrementalDetokenizer(tok, prompt_ids, SamplingParams())
    for token in ids:
        detok.update([token])
    assert REPLACEMENT not in detok.text(False)
    assert detok.text(True) == tok.decode(ids) and detok.text(True).endswith(REPLACEMENT)


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens(tok, prompt_ids, skip):
    ids = tok.encode("Hi there", add_special_tokens=False) + [2, 1] + tok.encode(" 中文", add_special_tokens=False) + [2]
    params = SamplingParams(skip_special_tokens=skip)
    final, _, shown, _ = feed(tok, prompt_ids, ids, params)
    assert final == tok.decode(ids, skip_special_tokens=skip) == detokenize_all(tok, ids, params)
    assert ("<|im_end|>" in final) is (not skip)


def test_first_token_keeps_leading_space(tok, prompt_ids):
    ids = tok.encode(" world", add_special_tokens=False)
    assert len(ids) == 1
    final, _, shown, _ = feed(tok, prompt_ids, ids, SamplingParams())
    assert shown[0] == final == " world"


def _metaspace_tokenizer():
    """A small SentencePiece-style tokenizer (Metaspace): its decoder drops the space of the first
    token of each decode, so text depends on left context."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = ["Hello world, the quick brown fox jumps over the lazy dog."] * 5 + ["hello there"]
    t.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_style_spaces_come_from_context():
    sp = _metaspace_tokenizer()
    prompt = sp.encode("Hello")
    out = sp.encode("Hello world the fox")[1:]
    assert sp.decode(out) == "world the fox"  # decoded alone, the first space is lost
    final, _, _, _ = feed(sp, prompt, out, SamplingParams())
    assert final == sp.decode(prompt + out)[len(sp.decode(prompt)):] == " world the fox"


def test_work_per_token_is_bounded(tok, prompt_ids):
    """Each step decodes a small window, not the whole output (64 requests x 256 tokens must be cheap)."""
    lengths = []

    class Counting:
        def decode(self, ids, **kwargs):
            lengths.append(len(ids))
            return tok.decode(ids, **kwargs)

    ids = tok.encode(" ".join(TEXTS) * 4, add_special_tokens=False)
    assert len(ids) > 500
    final, _, _, _ = feed(Counting(), prompt_ids, ids, SamplingParams(stop=["never appears here"]))
    assert final == tok.decode(ids)
    assert max(lengths) <= 16


def _stop_case(tok, text, stop, min_tokens):
    """Token ids of `text`, checking that `stop` spans at least `min_tokens` of them."""
    ids = tok.encode(text, add_special_tokens=False)
    start = text.index(stop)
    # Which tokens does the stop string touch? Count by decoded prefix lengths.
    touched, pos = 0, 0
    for i in range(len(ids)):
        nxt = len(tok.decode(ids[: i + 1]).rstrip(REPLACEMENT))
        if nxt > start and pos < start + len(stop):
            touched += 1
        pos = nxt
    assert touched >= min_tokens, f"{stop!r} spans only {touched} tokens"
    return ids


@pytest.mark.parametrize(
    "text,stop,min_tokens",
    [
        ("The answer is 42. Observation: done", "Observation:", 2),
        ("The answer is 42. Observation: done", "servation: do", 3),  # starts inside a token
        ("alpha beta gamma delta epsilon zeta", "beta gamma delta", 3),
        ("print('hi')\n```\nmore text after the fence", "')\n```\nmore", 4),
        ("我们今天去公园散步然后回家", "公园散步", 2),
        ("ok 😀🎉 then the rest", "😀🎉 then", 3),
    ],
)
@pytest.mark.parametrize("include", [False, True])
def test_stop_string_across_tokens(tok, prompt_ids, text, stop, min_tokens, include):
    ids = _stop_case(tok, text, stop, min_tokens)
    params = SamplingParams(stop=[stop], include_stop_str_in_output=include)
    final, reason, shown, steps = feed(tok, prompt_ids, ids, params)
    start = text.index(stop)
    assert reason == stop
    # It ends on the very token that completes the stop string, not before and not after.
    visible_before = tok.decode(ids[: steps - 1]).rstrip(REPLACEMENT)
    assert len(visible_before) < start + len(stop) <= len(tok.decode(ids[:steps]))
    assert final == (text[: start + len(stop)] if include else text[:start])
    if not include:
        for s in shown[:-1]:
            assert len(s) <= start, f"part of the stop string was shown: {s!r}"
            assert stop[0] not in s[start:]


def test_partial_stop_is_released_when_it_does_not_complete(tok, prompt_ids):
    text = "one two three four"
    ids = tok.encode(text, add_special_tokens=False)
    params = SamplingParams(stop=["two thr33"])
    final, reason, shown, _ = feed(tok, prompt_ids, ids, params)
    assert reason is None and final == text
    assert any(s.endswith("one") for s in shown)  # " two thr" was held back for a while
    assert not any(s.endswith("two") for s in shown)


def test_earliest_of_several_stops_wins(tok, prompt_ids):
    text = "first second third fourth"
    ids = tok.encode(text, add_special_tokens=False)
    # " third" is listed first, but "second" begins earlier; both complete on later tokens.
    params = SamplingParams(stop=[" third", "second", "fourth"])
    final, reason, _, _ = feed(tok, prompt_ids, ids, params)
    assert reason == "second" and final == "first "
    # Both complete within one multi-token update: the earlier start still wins.
    final, reason, _, _ = feed(tok, prompt_ids, ids, params, chunks=[len(ids)])
    assert reason == "second" and final == "first "


def test_update_after_stop_is_refused(tok, prompt_ids):
    detok = IncrementalDetokenizer(tok, prompt_ids, SamplingParams(stop=["a"]))
    assert detok.update(tok.encode("a", add_special_tokens=False)) == "a"
    assert detok.stop_reason == "a"
    with pytest.raises(RuntimeError):
        detok.update([100])


def test_chunked_updates_match_one_by_one(tok, prompt_ids):
    rng = random.Random(0)
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        chunks = [rng.randint(1, 4) for _ in ids]
        final, _, _, _ = feed(tok, prompt_ids, ids, SamplingParams(), chunks=chunks)
        assert final == tok.decode(ids)


def _reference_stop(tok, ids, stops, include):
    """Non-incremental oracle: re-decode the whole prefix after each token, search all of it."""
    for k in range(1, len(ids) + 1):
        text = tok.decode(ids[:k])
        if text.endswith(REPLACEMENT):
            continue  # an incomplete character: nothing new is visible yet
        hits = [(text.find(s), order, s) for order, s in enumerate(stops) if s in text]
        if hits:
            index, _, s = min(hits)
            return s, text[: index + len(s)] if include else text[:index]
    return None, tok.decode(ids)


def _may_complete(shown: str, known: str, stop: str) -> bool:
    """Whether `shown` ends in the start of an occurrence of `stop` that the text known so far has
    not yet contradicted (nor completed)."""
    for k in range(1, len(stop)):
        if shown.endswith(stop[:k]):
            tail = known[len(shown) - k :]
            if len(tail) < len(stop) and stop.startswith(tail):
                return True
    return False


_CHARS = st.one_of(
    st.sampled_from(list("ab ab\n中文😀é,.")),
    st.characters(exclude_categories=("Cs",), exclude_characters=REPLACEMENT),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), text=st.text(_CHARS, min_size=1, max_size=40), include=st.booleans())
def test_property_random_text_and_stops(tok, prompt_ids, data, text, include):
    ids = tok.encode(text, add_special_tokens=False)
    full = tok.decode(ids)
    # Some characters (controls, say) come back as no text at all: then there is nothing to stop on.
    n_stops = data.draw(st.integers(0, 3)) if full else 0
    stops = []
    for _ in range(n_stops):
        a = data.draw(st.integers(0, len(full) - 1))
        b = data.draw(st.integers(a + 1, min(len(full), a + 8)))
        stops.append(full[a:b])
    if data.draw(st.booleans()):
        stops.append("zz\u2603never")
    params = SamplingParams(stop=stops, include_stop_str_in_output=include)
    final, reason, shown, _ = feed(tok, prompt_ids, ids, params)
    want_reason, want_text = _reference_stop(tok, ids, stops, include)
    assert (reason, final) == (want_reason, want_text)
    if not include:
        for step, s in enumerate(shown):
            # No shown text ends in the start of a stop string that may still complete: one whose
            # characters known so far (the whole decode up to this token, an incomplete last
            # character aside) all agree with it. A start that the known text already contradicts
            # is safe to show (text "00" with stop "0?" shows the first "0").
            known = tok.decode(ids[: step + 1]).rstrip(REPLACEMENT)
            assert s == final or not any(_may_complete(s, known, stop) for stop in stops), (s, known, stops)


def test_backend_decode_is_the_tokenizers_decode_and_gives_its_text(tok):
    """The shortcut past transformers' decode wrapper is taken for SmolLM2's tokenizer, and gives the
    wrapper's text for any ids (special ones included), with and without skip_special_tokens."""
    from npu_serve.engine.detokenizer import _backend_decode

    fast = _backend_decode(tok)
    assert fast is not None and fast == tok._tokenizer.decode
    rng = random.Random(3)
    specials = list(tok.all_special_ids)
    for _ in range(200):
        ids = [rng.choice(specials) if rng.random() < 0.2 else rng.randrange(len(tok)) for _ in range(rng.randint(0, 12))]
        for skip in (True, False):
            want = tok.decode(ids, skip_special_tokens=skip, spaces_between_special_tokens=True,
                              clean_up_tokenization_spaces=False)
            assert fast(ids, skip_special_tokens=skip) == want, ids


def test_a_tokenizer_with_its_own_decode_keeps_it(tok):
    """A subclass that overrides _decode (some model tokenizers do) is never bypassed."""
    from npu_serve.engine.detokenizer import _backend_decode

    class Shouting(type(tok)):
        def _decode(self, token_ids, **kwargs):
            return super()._decode(token_ids, **kwargs).upper()

    loud = copy.copy(tok)
    loud.__class__ = Shouting
    assert _backend_decode(loud) is None
    ids = tok.encode("hello there", add_special_tokens=False)
    detok = IncrementalDetokenizer(loud, [], SamplingParams())
    detok.update(ids)
    assert detok.text(True) == "HELLO THERE"
