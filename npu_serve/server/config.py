"""ServerConfig: the HTTP-side settings, frozen and validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from npu_serve.server.caps import RequestCaps

REASONING_PARSERS = ("deepseek_r1", "qwen3")


@dataclass(frozen=True)
class ServerConfig:
    """What the server needs besides the engine.

    `served_model_name` None means "the engine's model name". The sampling defaults are the
    MaaS ones; `default_chat_max_tokens` None means "until EOS or the context is full", as vLLM
    0.6.0 does for chat. `chat_template` is the template text (not a path) that replaces the
    tokenizer's own.
    """

    served_model_name: str | None = None
    chat_template: str | None = None
    reasoning_parser: str | None = None
    default_temperature: float = 0.6
    default_top_p: float = 1.0
    default_top_k: int = -1
    default_completion_max_tokens: int | None = 16
    default_chat_max_tokens: int | None = None
    # Security (issue 5): the middleware and moderator are built from these in app.py.
    keys_db: str | None = None
    api_keys: tuple[str, ...] = field(default_factory=tuple)
    moderation: bool = True
    moderation_words: str | None = None
    moderation_hook: str | None = None
    # Run one tiny request after loading so the first client does not pay for lazy init.
    warmup: bool = True
    # A request field in no row of docs/api-fields.md is a 400 (vLLM 0.6.0, the 909 contract);
    # True drops it with a logged warning instead, as current vLLM does.
    accept_unknown_fields: bool = False
    # Operations (issue 13; README "Operations"). Admission: a generation request is refused with 503
    # + Retry-After while the engine's queue holds this many requests / prompt tokens (None: no limit).
    max_num_waiting_requests: int | None = 512
    max_num_waiting_tokens: int | None = None
    retry_after_s: int = 1
    max_request_body_bytes: int = 8 * 1024 * 1024  # 413 beyond, checked before the body is buffered
    caps: RequestCaps = field(default_factory=RequestCaps)
    # Graceful drain on SIGTERM/SIGINT: running requests get this long, then end with "abort".
    shutdown_timeout_s: float = 60.0
    metrics_require_key: bool = False  # /metrics is open (like /health) unless this is set
    log_requests: bool = False  # prompt and output text in the log (never keys)
    # The playground page at `/` and `/v1/infers/<id>/` (issue 14; README "Playground").
    playground: bool = True

    def __post_init__(self) -> None:
        if self.reasoning_parser is not None and self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(f"reasoning_parser must be one of {REASONING_PARSERS}, got {self.reasoning_parser!r}")
        if self.default_completion_max_tokens is not None and self.default_completion_max_tokens < 1:
            raise ValueError("default_completion_max_tokens must be at least 1")
        if self.default_chat_max_tokens is not None and self.default_chat_max_tokens < 1:
            raise ValueError("default_chat_max_tokens must be at least 1")
        if self.default_temperature < 0:
            raise ValueError("default_temperature must be non-negative")
        for name in ("max_num_waiting_requests", "max_num_waiting_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must be non-negative")
        if self.max_request_body_bytes < 1:
            raise ValueError("max_request_body_bytes must be at least 1")
        if self.shutdown_timeout_s < 0:
            raise ValueError("shutdown_timeout_s must be non-negative")
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
