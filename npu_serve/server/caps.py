"""Caps on what one request may ask for, checked before its prompt is tokenized.

A valid-looking request can still cost the server far more than its body's size suggests: n = 10^6
sequences, ten thousand stop strings the detokenizer must search on every token, a stop string as
long as the context, 10^5 messages through the chat template, 10^5 logit_bias entries, 10^6
logprobs per token. Each is refused with a 400 naming the field and the limit. (The context check,
prompt + max_tokens <= max_model_len, needs the prompt's length and stays in params.py.)
"""

from __future__ import annotations

from dataclasses import dataclass

from npu_serve.errors import InvalidParameter
from npu_serve.server.protocol import ChatCompletionRequest, _SamplingFields


@dataclass(frozen=True)
class RequestCaps:
    max_n: int = 16  # n and best_of (beam width)
    max_stop_strings: int = 16
    max_stop_string_chars: int = 256
    max_stop_token_ids: int = 256
    max_messages: int = 1024
    max_logit_bias_entries: int = 1024
    max_logprobs: int = 20  # logprobs, top_logprobs and prompt_logprobs (vLLM's --max-logprobs default)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _over(param: str, what: str, got: int, limit: int) -> InvalidParameter:
    return InvalidParameter(param, f"`{param}` asks for {got} {what}; this server allows at most {limit}.")


def check_caps(req: _SamplingFields, caps: RequestCaps) -> None:
    """Raise InvalidParameter (a 400 naming the field) for the first cap `req` breaks."""
    for param in ("n", "best_of"):
        value = getattr(req, param)
        if value is not None and value > caps.max_n:
            raise _over(param, "sequences", value, caps.max_n)
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if len(stops) > caps.max_stop_strings:
        raise _over("stop", "stop strings", len(stops), caps.max_stop_strings)
    longest = max((len(s) for s in stops), default=0)
    if longest > caps.max_stop_string_chars:
        raise _over("stop", "characters in one stop string", longest, caps.max_stop_string_chars)
    if req.stop_token_ids is not None and len(req.stop_token_ids) > caps.max_stop_token_ids:
        raise _over("stop_token_ids", "stop token ids", len(req.stop_token_ids), caps.max_stop_token_ids)
    if req.logit_bias is not None and len(req.logit_bias) > caps.max_logit_bias_entries:
        raise _over("logit_bias", "entries", len(req.logit_bias), caps.max_logit_bias_entries)
    if isinstance(req, ChatCompletionRequest):
        if len(req.messages) > caps.max_messages:
            raise _over("messages", "messages", len(req.messages), caps.max_messages)
        logprobs = ("top_logprobs", req.top_logprobs)
    else:
        logprobs = ("logprobs", req.logprobs)
    for param, value in (logprobs, ("prompt_logprobs", req.prompt_logprobs)):
        if value is not None and value > caps.max_logprobs:
            raise _over(param, "log-probabilities per token", value, caps.max_logprobs)
