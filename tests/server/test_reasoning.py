"""The reasoning parser: streamed deltas split at every possible boundary agree with the whole response."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npu_serve.server.reasoning import make_parser, split_whole

CASES = {
    # (parser, output text) -> (reasoning_content, content)
    ("deepseek_r1", "<think>plan A</think>answer"): ("plan A", "answer"),
    ("deepseek_r1", "plan A</think>answer"): ("plan A", "answer"),  # template opened the block
    ("deepseek_r1", "still thinking <thi"): ("still thinking <thi", None),  # never closed: all reasoning
    ("deepseek_r1", "a</think>"): ("a", None),
    ("deepseek_r1", "</think>x"): (None, "x"),
    ("deepseek_r1", "<thinkX</think>y"): ("<thinkX", "y"),
    ("deepseek_r1", "x<think>y</think>z</think>w"): ("x<think>y", "z</think>w"),
    ("qwen3", "<think>\nhmm\n</think>\n\nHello"): ("\nhmm\n", "\n\nHello"),
    ("qwen3", "Hello </think> there"): (None, "Hello </think> there"),  # no opening tag: no thinking
    ("qwen3", "<thin"): (None, "<thin"),
    ("qwen3", "<think>unfinished"): ("unfinished", None),
    ("qwen3", ""): (None, None),
    ("deepseek_r1", ""): (None, None),
}


def _stream(name: str, pieces: list[str]) -> tuple[str | None, str | None]:
    parser = make_parser(name)
    reasoning = content = ""
    for piece in pieces:
        part = parser.feed(piece)
        reasoning += part.reasoning
        content += part.content
    part = parser.finish()
    return (reasoning + part.reasoning) or None, (content + part.content) or None


@pytest.mark.parametrize("name,text", list(CASES))
def test_whole_response(name, text):
    assert split_whole(name, text) == CASES[(name, text)]


@pytest.mark.parametrize("name,text", list(CASES))
def test_every_two_and_three_way_split(name, text):
    expected = CASES[(name, text)]
    n = len(text)
    for i, j in itertools.combinations_with_replacement(range(n + 1), 2):
        assert _stream(name, [text[:i], text[i:j], text[j:]]) == expected, (i, j)


@pytest.mark.parametrize("name,text", list(CASES))
def test_character_by_character(name, text):
    assert _stream(name, list(text)) == CASES[(name, text)]


def test_nothing_is_emitted_that_could_still_be_a_tag():
    parser = make_parser("deepseek_r1")
    assert parser.feed("abc</th").reasoning == "abc"  # "</th" held back
    part = parser.feed("ink>def")
    assert (part.reasoning, part.content) == ("", "def")
    parser = make_parser("qwen3")
    assert parser.feed("<thi").content == ""  # could still open a think block
    assert parser.feed("s is text").content == "<this is text"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["deepseek_r1", "qwen3"]),
       st.lists(st.sampled_from(["<think>", "</think>", "<", "</", "think", ">", "a", " b", "\n", "<t", "k>"]),
                max_size=12),
       st.data())
def test_random_partitions_match_whole(name, atoms, data):
    text = "".join(atoms)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert _stream(name, pieces) == split_whole(name, text)


def test_no_parser_means_all_content():
    assert split_whole(None, "<think>x</think>y") == (None, "<think>x</think>y")
