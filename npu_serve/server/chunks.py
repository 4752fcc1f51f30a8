"""Turn the engine's cumulative RequestOutput snapshots into stream chunks, exactly as the Ascend
"909" images (vLLM 0.6.0) send them. Pure: no I/O, so every byte is unit-testable.

The shape, per request (n choices, told apart by `index`):
- chat only: one role chunk per choice, `delta: {"role": "assistant"}`;
- text chunks carrying only what is new since the last snapshot (snapshots may skip steps);
- per choice, the chunk that ends it carries `finish_reason` and `stop_reason`;
- with `include_usage`: `"usage": null` on every chunk (running counts instead with
  `continuous_usage_stats`), then one `choices: []` chunk with the whole request's usage, the
  completion tokens summed over all choices (vLLM 0.6.0 counted only the last choice: a bug).
Chunks are dumped with `exclude_unset=True`, so a key appears exactly when the builder sets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from npu_serve.outputs import CompletionOutput, RequestOutput
from npu_serve.server import logprobs as lp
from npu_serve.server.protocol import (
    ChatCompletionChunk, ChatStreamChoice, CompletionChunk, CompletionStreamChoice, DeltaMessage, usage,
)
from npu_serve.server.reasoning import ReasoningParser, Split, make_parser

CONTENT_FILTER = "content_filter"


@dataclass
class StreamSettings:
    request_id: str
    model: str
    created: int
    n: int
    prompt_tokens: int
    include_usage: bool = False
    continuous_usage: bool = False
    logprobs_top: int | None = None  # None: logprobs not requested
    tokenizer: Any = None  # only needed for logprobs
    echo: list[str] | None = None  # per choice: text to send before the output (echo)

    @classmethod
    def for_request(cls, req: Any, *, request_id: str, model: str, created: int, prompt_tokens: int,
                    logprobs_top: int | None, tokenizer: Any, echo: str) -> "StreamSettings":
        """Settings of one streamed request (chat or completions): usage options from its
        stream_options, the same echo text for each of its n choices."""
        opts = req.stream_options
        return cls(
            request_id=request_id, model=model, created=created, n=req.n, prompt_tokens=prompt_tokens,
            include_usage=bool(opts and opts.include_usage),
            continuous_usage=bool(opts and opts.include_usage and opts.continuous_usage_stats),
            logprobs_top=logprobs_top, tokenizer=tokenizer, echo=[echo] * req.n if echo else None)


@dataclass
class _Choice:
    text_len: int = 0
    num_tokens: int = 0
    finished: bool = False
    echoed: bool = False
    parser: ReasoningParser | None = None
    filters: dict[str, Any] = field(default_factory=dict)  # "content"/"reasoning" -> StreamFilter


class _StreamBuilder:
    """What chat and completion streams share: per-choice progress, usage and moderation."""

    def __init__(self, s: StreamSettings, moderator: Any = None, reasoning: str | None = None):
        self.s = s
        self._choices = [_Choice(parser=make_parser(reasoning)) for _ in range(s.n)]
        self._moderator = moderator
        self.blocked = False  # moderation stopped the stream: the caller aborts the request

    # ---- per-choice bookkeeping ----
    def _advance(self, out: CompletionOutput) -> tuple[str, list[int], list | None]:
        c = self._choices[out.index]
        text = out.text[c.text_len:]
        new_ids = out.token_ids[c.num_tokens:]
        new_lps = out.logprobs[c.num_tokens:] if (out.logprobs is not None and self.s.logprobs_top is not None) else None
        c.text_len, c.num_tokens = len(out.text), len(out.token_ids)
        return text, new_ids, new_lps

    def _filter(self, index: int, split: Split, final: bool) -> Split:
        """Pass each channel through its moderation StreamFilter; set `blocked` on a hit."""
        if self._moderator is None:
            return split
        c = self._choices[index]
        result = Split()
        for channel in ("reasoning", "content"):
            flt = c.filters.get(channel)
            if flt is None:
                flt = c.filters[channel] = self._moderator.stream_filter()
            safe, blocked = flt.feed(getattr(split, channel))
            if blocked:
                self.blocked = True
            elif final:
                safe += flt.flush()
            setattr(result, channel, getattr(result, channel) + safe)
        return result

    def _usage_for(self, choice_tokens: int | None):
        if not self.s.include_usage:
            return {}
        if not self.s.continuous_usage:
            return {"usage": None}
        return {"usage": usage(self.s.prompt_tokens, choice_tokens or 0)}

    def final_usage_chunk(self) -> str | None:
        """The `choices: []` chunk closing an include_usage stream, or None."""
        if not self.s.include_usage:
            return None
        total = sum(c.num_tokens for c in self._choices)
        chunk = self._chunk([], usage=usage(self.s.prompt_tokens, total))
        return chunk.model_dump_json(exclude_unset=True, exclude_none=True)

    def unfinished(self) -> list[int]:
        return [i for i, c in enumerate(self._choices) if not c.finished]

    def _chunk(self, choices: list, **extra):  # pragma: no cover - overridden
        raise NotImplementedError


class ChatStreamBuilder(_StreamBuilder):
    def __init__(self, s: StreamSettings, role: str = "assistant", moderator: Any = None,
                 reasoning: str | None = None):
        super().__init__(s, moderator, reasoning)
        self._role = role

    def _chunk(self, choices: list, **extra) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.s.request_id, object="chat.completion.chunk", created=self.s.created, model=self.s.model,
                                   choices=choices, **extra)

    def start(self) -> list[str]:
        """The role chunk of every choice (then the echoed text, when asked)."""
        out = []
        for i in range(self.s.n):
            choice = ChatStreamChoice(index=i, delta=DeltaMessage(role=self._role), logprobs=None, finish_reason=None)
            out.append(self._chunk([choice], **self._usage_for(0)).model_dump_json(exclude_unset=True))
        for i, text in enumerate(self.s.echo or []):
            if text:
                choice = ChatStreamChoice(index=i, delta=DeltaMessage(content=text), logprobs=None, finish_reason=None)
                out.append(self._chunk([choice], **self._usage_for(0)).model_dump_json(exclude_unset=True))
        return out

    def on_output(self, res: RequestOutput) -> list[str]:
        chunks = []
        for out in res.outputs:
            c = self._choices[out.index]
            if c.finished or self.blocked:
                continue
            text, new_ids, new_lps = self._advance(out)
            final = out.finish_reason is not None
            split = c.parser.feed(text) if c.parser else Split(content=text)
            if final and c.parser:
                split += c.parser.finish()
            split = self._filter(out.index, split, final)
            logprobs = None
            if new_lps is not None:
                logprobs = lp.chat_logprobs(new_ids, new_lps, self.s.logprobs_top, self.s.tokenizer)
            if self.blocked:
                chunks.extend(self._content_filter_ends(out.index, split))
                break
            delta = DeltaMessage()
            if split.reasoning:
                delta.reasoning_content = split.reasoning
            if split.content or not split.reasoning:
                delta.content = split.content
            if not final:
                if not (split.reasoning or split.content or (logprobs and logprobs.content)):
                    continue  # nothing new to say (text held back, e.g. a possible stop string or tag)
                choice = ChatStreamChoice(index=out.index, delta=delta, logprobs=logprobs, finish_reason=None)
            else:
                c.finished = True
                choice = ChatStreamChoice(index=out.index, delta=delta, logprobs=logprobs,
                                          finish_reason=str(out.finish_reason), stop_reason=out.stop_reason)
            chunks.append(self._chunk([choice], **self._usage_for(len(out.token_ids))).model_dump_json(exclude_unset=True))
        return chunks

    def _content_filter_ends(self, blocked_index: int, safe: Split) -> list[str]:
        """Moderation hit: every open choice ends now with finish_reason content_filter; the blocked
        one still gets the clean text that came before the term."""
        chunks = []
        for i in self.unfinished():
            c = self._choices[i]
            c.finished = True
            delta = DeltaMessage(content=safe.content if i == blocked_index else "")
            if i == blocked_index and safe.reasoning:
                delta.reasoning_content = safe.reasoning
            choice = ChatStreamChoice(index=i, delta=delta, logprobs=None, finish_reason=CONTENT_FILTER, stop_reason=None)
            chunks.append(self._chunk([choice], **self._usage_for(c.num_tokens)).model_dump_json(exclude_unset=True))
        return chunks


class CompletionStreamBuilder(_StreamBuilder):
    def _chunk(self, choices: list, **extra) -> CompletionChunk:
        return CompletionChunk(id=self.s.request_id, object="text_completion", created=self.s.created, model=self.s.model,
                               choices=choices, **extra)

    def start(self) -> list[str]:
        return []

    def on_output(self, res: RequestOutput) -> list[str]:
        chunks = []
        for out in res.outputs:
            c = self._choices[out.index]
            if c.finished or self.blocked:
                continue
            offset = c.text_len
            text, new_ids, new_lps = self._advance(out)
            final = out.finish_reason is not None
            text = self._filter(out.index, Split(content=text), final).content
            if self.s.echo and not c.echoed:
                c.echoed = True
                text = self.s.echo[out.index] + text
            logprobs = None
            if new_lps is not None:
                logprobs = lp.completion_logprobs(new_ids, new_lps, self.s.logprobs_top, self.s.tokenizer, offset)
            if self.blocked:
                for i in self.unfinished():
                    self._choices[i].finished = True
                    choice = CompletionStreamChoice(index=i, text=text if i == out.index else "", logprobs=None,
                                                    finish_reason=CONTENT_FILTER, stop_reason=None)
                    chunks.append(self._chunk([choice], **self._usage_for(self._choices[i].num_tokens))
                                  .model_dump_json(exclude_unset=True))
                break
            if not final and not text and not (logprobs and logprobs.tokens):
                continue
            c.finished = final
            choice = CompletionStreamChoice(index=out.index, text=text, logprobs=logprobs,
                                            finish_reason=str(out.finish_reason) if final else None,
                                            stop_reason=out.stop_reason if final else None)
            chunks.append(self._chunk([choice], **self._usage_for(len(out.token_ids))).model_dump_json(exclude_unset=True))
        return chunks
