"""Engine logprobs (one {token_id: Logprob} dict per position) in vLLM 0.6.0's two wire shapes.

Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}`.
Completions: parallel lists `tokens`, `token_logprobs`, `top_logprobs`, `text_offset`.
Log probabilities are floored at -9999.0 (JSON has no -inf).
"""

from __future__ import annotations

from typing import Any

from npu_serve.outputs import Logprob
from npu_serve.server.protocol import ChatLogProb, ChatLogProbs, ChatLogProbsContent, CompletionLogProbs

_FLOOR = -9999.0


def _token_text(lp: Logprob | None, token_id: int, tokenizer: Any) -> str:
    if lp is not None and lp.decoded_token is not None:
        return lp.decoded_token
    return tokenizer.decode([token_id])


def _value(lp: Logprob) -> float:
    return max(lp.logprob, _FLOOR)


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))


def chat_logprobs(token_ids: list[int], positions: list[dict[int, Logprob] | None], top_n: int,
                  tokenizer: Any) -> ChatLogProbs:
    content = []
    for token_id, step in zip(token_ids, positions):
        if step is None or token_id not in step:
            text = tokenizer.decode([token_id])
            content.append(ChatLogProbsContent(token=text, bytes=_bytes(text)))
            continue
        text = _token_text(step[token_id], token_id, tokenizer)
        ranked = sorted(step.items(), key=lambda kv: -kv[1].logprob)[:top_n] if top_n else []
        top = []
        for tid, lp in ranked:
            t = _token_text(lp, tid, tokenizer)
            top.append(ChatLogProb(token=t, logprob=_value(lp), bytes=_bytes(t)))
        content.append(ChatLogProbsContent(token=text, logprob=_value(step[token_id]), bytes=_bytes(text),
                                           top_logprobs=top))
    return ChatLogProbs(content=content)


def completion_logprobs(token_ids: list[int], positions: list[dict[int, Logprob] | None], top_n: int,
                        tokenizer: Any, initial_offset: int = 0) -> CompletionLogProbs:
    out = CompletionLogProbs()
    offset = initial_offset
    for token_id, step in zip(token_ids, positions):
        if step is None or token_id not in step:
            text = tokenizer.decode([token_id])
            out.tokens.append(text)
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
        else:
            text = _token_text(step[token_id], token_id, tokenizer)
            out.tokens.append(text)
            out.token_logprobs.append(_value(step[token_id]))
            # vLLM 0.6.0 sends the sampled token plus the top `logprobs` alternatives.
            ranked = sorted(step.items(), key=lambda kv: -kv[1].logprob)[: top_n + 1]
            out.top_logprobs.append({_token_text(lp, tid, tokenizer): _value(lp) for tid, lp in ranked})
        out.text_offset.append(offset)
        offset += len(text)
    return out


def prompt_logprobs(positions: list[dict[int, Logprob] | None] | None,
                    tokenizer: Any) -> list[dict[int, dict[str, Any]] | None] | None:
    """vLLM 0.6.0's `prompt_logprobs`: per prompt token (None for the first) a dict token id ->
    {"logprob", "rank", "decoded_token"}, the prompt token itself plus the requested top ones."""
    if positions is None:
        return None
    out: list[dict[int, dict[str, Any]] | None] = []
    for step in positions:
        if step is None:
            out.append(None)
            continue
        out.append({tid: {"logprob": _value(lp), "rank": lp.rank, "decoded_token": _token_text(lp, tid, tokenizer)}
                    for tid, lp in step.items()})
    return out
