"""Pydantic models of every request and response body (vLLM 0.6.0's OpenAI server, MaaS defaults).

The request models hold exactly the fields docs/api-fields.md marks *implemented* (a test checks
it); `fields.screen` has already dropped the ignored ones, refused the refused ones and, with
--accept-unknown-fields, dropped unknown ones. What is left unknown is forbidden here (vLLM 0.6.0
does; MaaS reports `extra_forbidden`), so a typo is a 400 naming the field instead of a silently
ignored setting. Sampling fields default to None where the server fills in a configured default
(temperature, top_p, top_k, max_tokens).

Responses are dumped like vLLM 0.6.0 dumps them: whole responses with every field, stream chunks
with `exclude_unset=True`, which is why chunk builders set `usage`/`logprobs` explicitly (to null)
when the key must appear and leave them unset when it must not.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Request):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class ChatMessageParam(BaseModel):
    """One input message. Unknown keys are ignored (clients echo back whole assistant messages,
    `reasoning_content` and `tool_calls` included); only the top level is strict."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class _SamplingFields(_Request):
    """Fields shared by chat and completions: OpenAI's, then vLLM's extras."""

    endpoint: ClassVar[str]  # the column of docs/api-fields.md that governs this model

    model: str
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    n: int = 1
    presence_penalty: float = 0.0
    seed: int | None = Field(None, ge=_I64_MIN, le=_I64_MAX)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    echo: bool = False
    # vLLM sampling extras
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    early_stopping: bool | Literal["never"] = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    truncate_prompt_tokens: int | None = Field(None, ge=1)
    prompt_logprobs: int | None = None
    # vLLM: the response id becomes "<prefix>-<request_id>" (the engine's own id stays unique).
    request_id: str | None = Field(None, min_length=1, max_length=256)


class ChatCompletionRequest(_SamplingFields):
    endpoint: ClassVar[str] = "chat"

    messages: list[ChatMessageParam] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    # OpenAI's current name for the output cap; with max_tokens it must agree (params.check_request).
    max_completion_tokens: int | None = None
    # Tool calling is not implemented: tools reach the chat template only with tool_choice "none".
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    documents: list[dict[str, str]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # Every value the openai SDK allows; handed to the chat template, as vLLM does.
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None


class CompletionRequest(_SamplingFields):
    endpoint: ClassVar[str] = "completions"

    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    add_special_tokens: bool = True


# ---- responses ---------------------------------------------------------------------------------


class UsageInfo(_Response):
    # Field order is the wire order MaaS documents: prompt, total, completion.
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0


def usage(prompt_tokens: int, completion_tokens: int) -> UsageInfo:
    return UsageInfo(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens + completion_tokens,
                     completion_tokens=completion_tokens)


class ChatLogProb(_Response):
    token: str
    logprob: float = -9999.0
    bytes: list[int] | None = None


class ChatLogProbsContent(ChatLogProb):
    top_logprobs: list[ChatLogProb] = Field(default_factory=list)


class ChatLogProbs(_Response):
    content: list[ChatLogProbsContent] | None = None


class CompletionLogProbs(_Response):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class ChatMessage(_Response):
    role: str
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


class ChatCompletionChoice(_Response):
    index: int
    message: ChatMessage
    logprobs: ChatLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    prompt_logprobs: list[dict[int, dict[str, Any]] | None] | None = None


class DeltaMessage(_Response):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None


class ChatStreamChoice(_Response):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: list[dict[int, dict[str, Any]] | None] | None = None


class CompletionResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo


class CompletionStreamChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionChunk(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionStreamChoice]
    usage: UsageInfo | None = None


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "npu-serve"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    description: str = ""


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


# ---- errors and service routes (documented in /openapi.json) -------------------------------------


class ErrorResponse(BaseModel):
    """vLLM 0.6.0's flat error body (errors.error_body builds it), for every 4xx/5xx but moderation's."""

    model_config = ConfigDict(extra="forbid")
    object: Literal["error"] = "error"
    message: str
    type: str
    param: str | None = None
    code: int


class ModerationErrorResponse(BaseModel):
    """MaaS's own body for a request refused by content moderation (403)."""

    model_config = ConfigDict(extra="forbid")
    error_code: str
    error_msg: str


class HealthStatus(BaseModel):
    """`/health`'s 503 body (its 200 has no body)."""

    status: Literal["loading", "draining", "error"]
    message: str | None = None


class VersionInfo(_Response):
    version: str
    model: str | None = None
    max_model_len: int | None = None
    device: str | None = None
    dtype: str | None = None
    block_size: int | None = None
    kv_blocks_total: int | None = None
    tensor_parallel_size: int | None = None
    attention_backend: str | None = None
