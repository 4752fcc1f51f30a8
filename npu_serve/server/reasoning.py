"""Split a thinking model's output into `reasoning_content` and `content`.

Two styles, both `<think>...</think>`:
- `deepseek_r1`: the chat template already opened the think block, so the output starts inside it
  and may or may not repeat the opening tag. Everything before `</think>` is reasoning; an output
  that never closes the block is all reasoning.
- `qwen3`: the model opens the block itself. An output that starts with `<think>` is reasoning up
  to `</think>`; one that does not (thinking switched off) is all content.

One streaming state machine serves both streamed deltas and whole responses (a whole response is
one big delta plus `finish()`), so the two can never disagree. A tag may arrive split across
tokens at any character: the parser holds back exactly the tail that could still be the start of
the tag it is looking for, and releases it as soon as it cannot be, or at `finish()`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

THINK_START = "<think>"
THINK_END = "</think>"


class _State(enum.Enum):
    OPENING = 0  # at the very start: might the output open with <think>?
    THINKING = 1
    ANSWERING = 2


@dataclass
class Split:
    reasoning: str = ""
    content: str = ""

    def __iadd__(self, other: Split) -> Split:
        self.reasoning += other.reasoning
        self.content += other.content
        return self


class ReasoningParser:
    """Feed output text deltas in order; each call returns the reasoning/content now safe to emit."""

    def __init__(self, thinking_by_default: bool):
        # True: a missing opening tag means "already thinking" (deepseek_r1); False: "not thinking".
        self._thinking_by_default = thinking_by_default
        self._state = _State.OPENING
        self._held = ""

    def feed(self, delta: str) -> Split:
        text = self._held + delta
        self._held = ""
        out = Split()
        if self._state is _State.OPENING:
            if text.startswith(THINK_START):
                text = text[len(THINK_START):]
                self._state = _State.THINKING
            elif THINK_START.startswith(text):  # still could be the opening tag (or empty)
                self._held = text
                return out
            else:
                self._state = _State.THINKING if self._thinking_by_default else _State.ANSWERING
        if self._state is _State.THINKING:
            end = text.find(THINK_END)
            if end < 0:
                keep = _partial_suffix(text, THINK_END)
                out.reasoning = text[: len(text) - keep]
                self._held = text[len(text) - keep:]
                return out
            out.reasoning = text[:end]
            text = text[end + len(THINK_END):]
            self._state = _State.ANSWERING
        out.content = text
        return out

    def finish(self) -> Split:
        """The output ended: whatever was held back was not a tag after all."""
        held, self._held = self._held, ""
        if self._state is _State.OPENING:
            if not held:
                return Split()
            self._state = _State.THINKING if self._thinking_by_default else _State.ANSWERING
        if self._state is _State.THINKING:
            return Split(reasoning=held)
        return Split(content=held)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def make_parser(name: str | None) -> ReasoningParser | None:
    if name is None:
        return None
    if name == "deepseek_r1":
        return ReasoningParser(thinking_by_default=True)
    if name == "qwen3":
        return ReasoningParser(thinking_by_default=False)
    raise ValueError(f"unknown reasoning parser {name!r}; expected deepseek_r1 or qwen3")


def split_whole(name: str | None, text: str) -> tuple[str | None, str | None]:
    """(reasoning_content, content) of a finished output; empty parts are None, as vLLM reports."""
    parser = make_parser(name)
    if parser is None:
        return None, text
    parts = parser.feed(text)
    parts += parser.finish()
    return parts.reasoning or None, parts.content or None
