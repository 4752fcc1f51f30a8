"""Content moderation, as MaaS does it: refuse sensitive input (403), cut sensitive streamed output.

Terms come from a UTF-8 word list (``--moderation-words``: one term a line, blank lines and ``#``
comments ignored) and are matched with an Aho-Corasick automaton (pyahocorasick): one pass over the
text finds every term, whatever the list's size. Latin is matched case-insensitively: terms and text
are lower-cased one character at a time where that keeps the length (it almost always does; the few
characters whose lower case is longer, like 'İ', stay as they are), so a match's position in the folded
text is its position in the original.

A site may plug in its own service with ``--moderation-hook module:function``, a callable
``(text: str) -> bool`` (True = sensitive), asked in addition to the word list.

Streaming: ``StreamFilter`` holds back only the last ``longest_term - 1`` characters (the only place
a term that is not yet complete could begin) and releases everything before them at once, so a clean
stream is delayed by at most that many characters and, joined with ``flush()``, is exactly the input.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import ahocorasick

from npu_serve.errors import NpuServeError

MODERATION_ERROR_BODY = {
    "error_code": "ModelArts.4910",
    "error_msg": "May contain sensitive information, please try again.",
}


class ModerationConfigError(NpuServeError):
    """The word list or hook named on the command line can't be used."""


class ModerationHookError(NpuServeError):
    """The site's hook raised; the request fails rather than passing unchecked."""


def fold(text: str) -> str:
    """Lower case with the length (and so every index) preserved."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(lc if len(lc := c.lower()) == 1 else c for c in text)


def read_terms(path: str | Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ModerationConfigError(f"cannot read moderation word list {path}: {e}") from e
    terms = []
    for line in lines:
        term = line.strip()
        if term and not term.startswith("#"):
            terms.append(term)
    return terms


def load_hook(spec: str) -> Callable[[str], bool]:
    """``package.module:function`` (the function may be a dotted attribute path)."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ModerationConfigError(f"--moderation-hook must look like module:function, got {spec!r}")
    try:
        obj = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            obj = getattr(obj, attr)
    except (ImportError, AttributeError) as e:
        raise ModerationConfigError(f"cannot load moderation hook {spec!r}: {e}") from e
    if not callable(obj):
        raise ModerationConfigError(f"moderation hook {spec!r} is not callable")
    return obj


class Moderator:
    """One per server. Thread-safe for reads: the automaton is built once and never changed."""

    def __init__(self, terms: list[str] | tuple[str, ...] = (), hook: Callable[[str], bool] | None = None):
        folded = sorted({fold(t) for t in terms if t})
        self._automaton = None
        self.longest = 0
        if folded:
            automaton = ahocorasick.Automaton()
            for term in folded:
                automaton.add_word(term, len(term))
            automaton.make_automaton()
            self._automaton = automaton
            self.longest = max(len(t) for t in folded)
        self._hook = hook

    @classmethod
    def from_config(cls, words_file: str | None, hook: str | None, enabled: bool = True) -> Moderator | None:
        """None means moderation is off: ``--no-moderation``, or neither a list nor a hook given."""
        if not enabled or (words_file is None and hook is None):
            return None
        terms = read_terms(words_file) if words_file is not None else []
        return cls(terms, load_hook(hook) if hook is not None else None)

    def first_match(self, text: str) -> int | None:
        """Start index of the earliest word-list term in ``text``, or None."""
        if self._automaton is None or not text:
            return None
        best = None
        for end, length in self._automaton.iter(fold(text)):
            start = end - length + 1
            if best is None or start < best:
                best = start
        return best

    def open_prefix_start(self, text: str) -> int:
        """Start of the longest tail of ``text`` that is the beginning of some term; len(text) if none."""
        if self._automaton is None:
            return len(text)
        folded = fold(text)
        for p in range(max(len(folded) - self.longest + 1, 0), len(folded)):
            if self._automaton.match(folded[p:]):
                return p
        return len(folded)

    def ask_hook(self, text: str) -> bool:
        if self._hook is None:
            return False
        try:
            return bool(self._hook(text))
        except Exception as e:
            raise ModerationHookError(f"moderation hook failed: {e!r}") from e

    def check(self, text: str) -> bool:
        """True = sensitive: refuse (403 with MODERATION_ERROR_BODY)."""
        return self.first_match(text) is not None or self.ask_hook(text)

    def stream_filter(self) -> StreamFilter:
        return StreamFilter(self)


class StreamFilter:
    """One per streamed choice (and text field). Feed each delta; send what comes back.

    Invariant: after each ``feed`` the text released so far plus the held tail is every character fed,
    the held tail is at most ``longest - 1`` characters, and no term occurs in released + held.
    Only the window (held tail + new delta) is scanned: a term ending in the new delta is at most
    ``longest`` characters long, so it starts inside that window.

    With a hook, the hook is asked about the whole text so far on every ``feed``: O(total length) per
    delta, O(n^2) characters over a stream. Cheap for local checks on replies of a few thousand
    characters; a hook that calls a remote service should batch or cache. The hook can't say where a
    match is, so on True nothing more is released; a term the hook sees only once complete may have had
    its beginning released already (the hold-back is sized for the word list, which the hook isn't).
    """

    def __init__(self, moderator: Moderator):
        self._moderator = moderator
        self._hold = max(moderator.longest - 1, 0)
        self._held = ""
        self._seen: list[str] = []  # everything fed, for the hook
        self.blocked = False

    def feed(self, delta: str) -> tuple[str, bool]:
        """Returns (text now safe to send, blocked). Once blocked, always ("", True)."""
        if self.blocked:
            return "", True
        window = self._held + delta
        start = self._moderator.first_match(window)
        if start is not None:
            # A longer term may have begun before this match and not be complete yet ("abcdef" while
            # "cd" just matched): cut before that too, so no part of any term reaches the client.
            start = min(start, self._moderator.open_prefix_start(window))
            self._block()
            return window[:start], True
        if self._moderator._hook is not None:
            self._seen.append(delta)
            if self._moderator.ask_hook("".join(self._seen)):
                self._block()
                return "", True
        cut = max(len(window) - self._hold, 0)
        self._held = window[cut:]
        return window[:cut], False

    def flush(self) -> str:
        """At a normal end: the held tail (already checked). Empty once blocked."""
        if self.blocked:
            return ""
        tail, self._held = self._held, ""
        return tail

    def _block(self) -> None:
        self.blocked = True
        self._held = ""
        self._seen = []
