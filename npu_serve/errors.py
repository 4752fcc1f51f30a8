"""Typed errors that cross the engine/server boundary. The server maps each to an HTTP status."""

from __future__ import annotations


class NpuServeError(Exception):
    """Base class of every error npu-serve raises on purpose."""


class InvalidParameter(NpuServeError, ValueError):
    """A request parameter breaks a rule. `param` names it; the server answers 400."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param
        self.message = message


class PromptTooLong(InvalidParameter):
    """The prompt (plus the requested completion) does not fit the model's context."""

    def __init__(self, max_model_len: int, prompt_tokens: int, completion_tokens: int, param: str = "messages"):
        requested = prompt_tokens + completion_tokens
        message = (
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{requested} tokens ({prompt_tokens} in the messages, {completion_tokens} in the completion). "
            "Please reduce the length of the messages or completion."
        )
        super().__init__(param, message)
        self.max_model_len = max_model_len
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


class EngineDeadError(NpuServeError):
    """The engine loop stopped (a device error, a bug); no request can make progress."""


class DeviceUnavailable(NpuServeError):
    """The requested device (or its runtime, e.g. torch_npu + CANN) cannot be used here."""


class UnsupportedModel(NpuServeError):
    """The model uses something npu-serve does not compute exactly (an attention feature a backend
    lacks, a layer type, a keyword transformers passes that we do not implement), or cannot be split
    as asked (tensor parallelism). Raised while the engine is built, before any request is served."""


class RequestFailed(NpuServeError):
    """Every request of an offline `LLM.generate()` call failed inside the engine (a device fault,
    a model the backend mishandles); the message is the engine's error. Where only some failed,
    generate() returns their outputs with finish_reason "error" and `error` set instead."""


class DistributedError(EngineDeadError):
    """A tensor-parallel rank died, failed, or a collective timed out: the ranks can no longer run
    steps together, so the engine stops (and the server exits non-zero for a restart)."""
