"""Incremental detokenization and stop strings, one request at a time (torch-free).

Decoding the whole output again after every token costs O(n) per token, O(n^2) per request. We keep
two offsets into the token ids instead (the technique of HF's TextStreamer and vLLM's detokenizer):

    ids:  ... | prefix_offset ............ | read_offset ........... | (end)
              '-- already shown as text --'-- decoded, not yet shown --'

Each step decodes `ids[prefix_offset:read_offset]` (the prefix) and `ids[prefix_offset:]` and takes
the part of the second that extends the first. Decoding a few tokens of left context, rather than
the new tokens alone, is what keeps context-dependent text right: SentencePiece decoders drop the
leading space of the first token of a decode, and byte-level BPE (GPT-2 style, as SmolLM2's tokenizer
is) splits one character over several tokens. While the decode ends in U+FFFD the last character
is still incomplete, so nothing is shown and the offsets stay put until a later token completes it.
The offsets start in the prompt's tail, so the first output token also has left context.

Stop strings are searched only in the tail that a new match can touch, and while a request runs the
shown text holds back any suffix that could still grow into a stop string.
"""

from __future__ import annotations

from typing import Any

from npu_serve.sampling_params import SamplingParams

# How many prompt tokens of left context the first decode sees (vLLM uses 5, plus 2 spare).
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


def detokenize_all(tokenizer: Any, token_ids: list[int], params: SamplingParams) -> str:
    """Decode `token_ids` in one go, with the same options the incremental path uses (a reference)."""
    return _decode(tokenizer, token_ids, params)


def _decode(tokenizer: Any, token_ids: list[int], params: SamplingParams) -> str:
    # clean_up_tokenization_spaces would rewrite " ." to "." depending on what follows, which no
    # incremental decoder can match; vLLM never applies it to generated text either.
    return tokenizer.decode(
        token_ids,
        skip_special_tokens=params.skip_special_tokens,
        spaces_between_special_tokens=params.spaces_between_special_tokens,
        clean_up_tokenization_spaces=False,
    )


def _backend_decode(tokenizer: Any) -> Any:
    """The tokenizers library's own `decode` where transformers' `decode` would only forward to it,
    else None. Why: the wrapper (argument conversion, batching checks, kwargs) cost 3.7 us a call
    against 1.1 us for the backend, and every generated token costs two decodes (SmolLM2, 7 ids).

    It forwards when the tokenizer is transformers' tokenizers-backed class (TokenizersBackend, or
    PreTrainedTokenizerFast before transformers 5) without its own `decode` or `_decode`: that
    `_decode` calls `self._tokenizer.decode(ids, skip_special_tokens=...)` and, with
    clean_up_tokenization_spaces=False as we always pass, nothing else (spaces_between_special_tokens
    only matters to the slow Python tokenizers). Found by name in the class's MRO, so that engine/
    imports no transformers (tests/engine/test_torch_free.py)."""
    mro = type(tokenizer).__mro__
    fast = next((c for c in mro if c.__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast")
                 and c.__module__.startswith("transformers.")), None)
    base = next((c for c in mro if c.__name__ == "PreTrainedTokenizerBase"
                 and c.__module__.startswith("transformers.")), None)
    backend = getattr(tokenizer, "_tokenizer", None)
    if fast is None or base is None or not callable(getattr(backend, "decode", None)):
        return None
    if type(tokenizer)._decode is not fast._decode or type(tokenizer).decode is not base.decode:
        return None
    return backend.decode


class IncrementalDetokenizer:
    """Turns one request's generated token ids into text as they arrive, and finds stop strings.

    Contract: after any sequence of `update` calls, `text(False)` is a prefix of the final
    `text(True)`, never grows shorter, never contains half a UTF-8 character, and never contains a
    prefix of a stop string that a later token could complete. Stop tokens (EOS, stop_token_ids) are
    the scheduler's business, not this class's.
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._tokenizer = tokenizer
        self._params = params
        self._fast_decode = _backend_decode(tokenizer)
        self._stops: list[str] = list(params.stop or [])
        self._max_stop_len = max((len(s) for s in self._stops), default=0)
        # Only the prompt's tail is kept, as left context; the output ids follow it.
        context = list(prompt_token_ids[-(_PROMPT_CONTEXT_TOKENS + 2):])
        self._ids: list[int] = context
        self._prefix_offset = max(len(context) - _PROMPT_CONTEXT_TOKENS, 0)
        self._read_offset = len(context)
        # The text of ids[prefix_offset:read_offset], cached so each step decodes only once more.
        self._prefix_text = self._decode(self._prefix_offset, self._read_offset)
        self._text = ""
        self._stop_reason: str | None = None

    @property
    def stop_reason(self) -> str | None:
        """The stop string that ended generation, or None while no stop string has matched."""
        return self._stop_reason

    def update(self, new_token_ids: list[int]) -> str | None:
        """Append newly generated tokens (usually one). Returns the stop string that matched, if any:
        generation must then end with finish_reason "stop" and stop_reason = that string."""
        if self._stop_reason is not None:
            raise RuntimeError("update() after a stop string matched: the request has already finished")
        if not new_token_ids:
            return None
        self._ids.extend(new_token_ids)
        new_text = self._decode(self._prefix_offset, len(self._ids))
        if len(new_text) <= len(self._prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            # Nothing visible yet (a skipped special token) or a character still incomplete.
            return None
        delta = new_text[len(self._prefix_text):]
        # The newly read tokens become the next step's left context.
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._prefix_text = self._decode(self._prefix_offset, self._read_offset)
        old_len = len(self._text)
        self._text += delta
        return self._check_stop(old_len)

    def text(self, finished: bool) -> str:
        """The output text that is safe to show now.

        While not finished it holds back an incomplete trailing character and any suffix that is the
        start of a stop string. When finished it is the whole final text: truncated before the stop
        string that matched (or just after it with include_stop_str_in_output), else everything the
        tokens decode to, including a trailing incomplete character as U+FFFD.
        """
        if self._stop_reason is not None:
            return self._text
        if finished:
            pending = self._decode(self._prefix_offset, len(self._ids))[len(self._prefix_text):]
            return self._text + pending
        held = self._held_back_len()
        return self._text[: len(self._text) - held] if held else self._text

    def _decode(self, start: int, end: int) -> str:
        if self._fast_decode is not None:
            return self._fast_decode(self._ids[start:end], skip_special_tokens=self._params.skip_special_tokens)
        return _decode(self._tokenizer, self._ids[start:end], self._params)

    def _check_stop(self, old_len: int) -> str | None:
        """Find the earliest stop string that the text appended after `old_len` completes."""
        if not self._stops:
            return None
        # A match wholly inside the old text would have been found by an earlier step.
        start = max(old_len - self._max_stop_len + 1, 0)
        best: tuple[int, str] | None = None
        for stop in self._stops:
            index = self._text.find(stop, start)
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        if best is None:
            return None
        index, stop = best
        end = index + len(stop) if self._params.include_stop_str_in_output else index
        # Text after the stop string (decoded from the same token) is dropped, as vLLM does.
        self._text = self._text[:end]
        self._stop_reason = stop
        return stop

    def _held_back_len(self) -> int:
        """Length of the longest suffix of the text that some stop string starts with.

        Holding back only that suffix (not always max_stop_len - 1 chars) shows text sooner and still
        never shrinks: a longer such suffix later would have been a longer such suffix now.
        """
        text = self._text
        for length in range(min(self._max_stop_len - 1, len(text)), 0, -1):
            tail = text[-length:]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0
