"""What the engine hands back: RequestOutput snapshots (cumulative, as vLLM's LLM API returns them).

FinishReason is the one table of ways a request can end; it is part of the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class FinishReason(str, Enum):
    STOP = "stop"  # EOS, a stop string or a stop token
    LENGTH = "length"  # max_tokens or the context is full
    ABORT = "abort"  # the client went away or asked to cancel
    ERROR = "error"  # the engine failed this request
    CONTENT_FILTER = "content_filter"  # moderation refused the output

    def __str__(self) -> str:
        return self.value


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One dict per position: token id -> Logprob (the chosen token plus the top alternatives).
SampleLogprobs = list[dict[int, Logprob]]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: SampleLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    num_cached_tokens: int = 0
    error: str | None = field(default=None)  # set when finish_reason is "error"
    # Seconds from the engine receiving the request to its first schedule (None until scheduled).
    queue_time: float | None = None
