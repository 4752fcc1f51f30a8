"""Moderation: word list parsing, case-insensitive Latin and Chinese terms, and the stream filter's
promises (no text of a term ever released, however it is split; clean streams pass unchanged, held
back by at most longest_term - 1 characters)."""

from __future__ import annotations

import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npu_serve.server.moderation import (
    MODERATION_ERROR_BODY,
    ModerationConfigError,
    ModerationHookError,
    Moderator,
    fold,
    read_terms,
)

TERMS = ["secret plan", "机密", "敏感词汇", "BadWord"]


@pytest.fixture
def words_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# sensitive terms\n\nsecret plan\n  机密  \n敏感词汇\n#not-a-term\nBadWord\n", encoding="utf-8")
    return path


def run_stream(moderator: Moderator, deltas: list[str]) -> tuple[list[str], bool]:
    """Feeds deltas as a server would; returns everything sent, chunk by chunk, and whether blocked.
    Checks on the way that nothing is sent after blocking."""
    f = moderator.stream_filter()
    sent, blocked = [], False
    for d in deltas:
        out, now_blocked = f.feed(d)
        assert not (blocked and out), "text sent after the stream was blocked"
        sent.append(out)
        blocked = now_blocked
    if not blocked:
        sent.append(f.flush())
    else:
        assert f.flush() == ""
    return sent, blocked


def contains_term(text: str, terms) -> bool:
    return any(fold(t) in fold(text) for t in terms)


def test_body_is_maas_exactly():
    assert MODERATION_ERROR_BODY == {
        "error_code": "ModelArts.4910",
        "error_msg": "May contain sensitive information, please try again.",
    }


def test_word_file_parsing(words_file):
    assert read_terms(words_file) == TERMS


def test_from_config(words_file):
    assert Moderator.from_config(None, None) is None
    assert Moderator.from_config(str(words_file), None, enabled=False) is None
    m = Moderator.from_config(str(words_file), None)
    assert m.check("这是机密") and not m.check("这是秘密")
    with pytest.raises(ModerationConfigError, match="cannot read"):
        Moderator.from_config("/nonexistent/words.txt", None)


def test_input_check_latin_case_insensitive(words_file):
    m = Moderator.from_config(str(words_file), None)
    for text in ("the SECRET PLAN is", "a badword here", "BADWORD", "Secret Plan"):
        assert m.check(text), text
    for text in ("secret  plan", "bad word", "", "plain text"):
        assert not m.check(text), text


def test_case_folding_keeps_positions():
    # 'İ'.lower() is two characters; folding must not shift what follows it.
    assert len(fold("İİ abc")) == len("İİ abc")
    m = Moderator(["abc"])
    text = "İİİ xx ABC tail"
    assert m.first_match(text) == text.index("ABC")
    sent, blocked = run_stream(m, [text])
    assert blocked and "".join(sent) == "İİİ xx "


@pytest.mark.parametrize("pieces", [
    ["The se", "cret plan is here"],  # 2 deltas
    ["The sec", "ret p", "lan is here"],  # 3
    ["The ", "s", "e", "c", "r", "e", "t", " ", "p", "l", "a", "n", " is here"],  # one char at a time
    ["The SECRET", " PLAN", " is here"],  # upper case, split
])
def test_latin_term_split_across_deltas_never_sent(words_file, pieces):
    m = Moderator.from_config(str(words_file), None)
    sent, blocked = run_stream(m, pieces)
    assert blocked
    emitted = "".join(sent)
    assert emitted == "The "
    for i in range(len(emitted) + 1):  # no prefix of what the client saw holds any of the term
        assert "plan" not in emitted[:i].lower() and "secret" not in emitted[:i].lower()


@pytest.mark.parametrize("pieces", [
    ["这是", "机", "密文件"],
    ["这是机", "密", "文件"],
    ["关于敏", "感", "词", "汇的说明"],
    ["关于敏感", "词汇的说明"],
])
def test_chinese_term_split_across_deltas_never_sent(words_file, pieces):
    m = Moderator.from_config(str(words_file), None)
    sent, blocked = run_stream(m, pieces)
    assert blocked
    emitted = "".join(sent)
    assert emitted in ("这是", "关于")
    assert "机" not in emitted and "敏" not in emitted


def test_nothing_after_block():
    m = Moderator(["机密", "敏感词汇"])
    f = m.stream_filter()
    assert f.feed("ok 机") == ("o", False)  # holds back 3 chars ("敏感词汇" is 4 long)
    assert f.feed("密 and more") == ("k ", True)
    assert f.feed("clean text") == ("", True)
    assert f.flush() == ""


def test_longer_term_begun_before_a_shorter_match_is_cut_too():
    m = Moderator(["abcdef", "cd"])
    sent, blocked = run_stream(m, ["xxab", "cd", "ef"])
    assert blocked and "".join(sent) == "xx"


def test_clean_stream_is_unchanged_and_barely_delayed(words_file):
    m = Moderator.from_config(str(words_file), None)
    assert m.longest == len("secret plan")
    text = "A perfectly ordinary reply, 有中文也有English, about a secret plot? No: a secret-plan, secret\nplan. 机器密码."
    f = m.stream_filter()
    fed, released = "", ""
    for ch in text:
        fed += ch
        out, blocked = f.feed(ch)
        assert not blocked
        released += out
        assert fed.startswith(released)
        assert len(fed) - len(released) <= m.longest - 1  # the hold-back is bounded
        if len(fed) >= m.longest - 1:
            assert len(fed) - len(released) == m.longest - 1  # and no larger than it needs to be
    released += f.flush()
    assert released == text


def test_no_terms_means_no_hold_back():
    m = Moderator([], hook=lambda t: False)
    f = m.stream_filter()
    assert f.feed("abc") == ("abc", False)
    assert f.flush() == ""


# --- hooks -------------------------------------------------------------------------------------------

@pytest.fixture
def hook_module(tmp_path, monkeypatch):
    (tmp_path / "site_moderation.py").write_text(textwrap.dedent("""
        CALLS = []

        def is_sensitive(text):
            CALLS.append(text)
            return "forbidden" in text

        def broken(text):
            raise RuntimeError("service down")

        not_callable = 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "site_moderation"
    sys.modules.pop("site_moderation", None)


def test_hook_alone_and_with_words(hook_module, words_file):
    m = Moderator.from_config(None, f"{hook_module}:is_sensitive")
    assert m.check("this is forbidden") and not m.check("this is fine") and not m.check("机密")
    both = Moderator.from_config(str(words_file), f"{hook_module}:is_sensitive")
    assert both.check("this is forbidden") and both.check("机密") and not both.check("fine")


def test_hook_in_stream_sees_accumulated_text(hook_module):
    m = Moderator.from_config(None, f"{hook_module}:is_sensitive")
    calls = sys.modules[hook_module].CALLS
    calls.clear()
    sent, blocked = run_stream(m, ["all ", "is for", "bidden now"])
    assert blocked and "".join(sent) == "all is for"
    assert calls == ["all ", "all is for", "all is forbidden now"]


def test_hook_errors(hook_module):
    with pytest.raises(ModerationConfigError, match="module:function"):
        Moderator.from_config(None, "no_colon")
    with pytest.raises(ModerationConfigError, match="cannot load"):
        Moderator.from_config(None, "no_such_module_xyz:f")
    with pytest.raises(ModerationConfigError, match="cannot load"):
        Moderator.from_config(None, f"{hook_module}:missing")
    with pytest.raises(ModerationConfigError, match="not callable"):
        Moderator.from_config(None, f"{hook_module}:not_callable")
    m = Moderator.from_config(None, f"{hook_module}:broken")
    with pytest.raises(ModerationHookError, match="service down"):
        m.check("anything")


# --- properties --------------------------------------------------------------------------------------

ALPHABET = "abcAB 机密敏感x"


@st.composite
def stream_case(draw):
    terms = draw(st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=5).filter(str.strip),
                          min_size=1, max_size=4))
    text = draw(st.text(alphabet=ALPHABET, max_size=40))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    return terms, text, pieces


@settings(max_examples=400, deadline=None)
@given(stream_case())
def test_stream_filter_properties(case):
    terms, text, pieces = case
    m = Moderator(terms)
    sent, blocked = run_stream(m, pieces)
    emitted = "".join(sent)
    assert text.startswith(emitted)
    assert not contains_term(emitted, terms)  # so no prefix of it holds a term either
    folded = fold(text)
    starts = [i for t in terms for i in range(len(text)) if folded.startswith(fold(t), i)]
    if starts:
        assert blocked and len(emitted) <= min(starts)
    else:
        assert not blocked and emitted == text
