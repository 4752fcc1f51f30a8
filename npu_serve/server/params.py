"""From a validated request body to engine inputs: SamplingParams and the context-length check.

The refusal rules of the MaaS contract live in `SamplingParams._verify` (shared with the offline
API); here are only the rules that need the server's view: defaults, `stream_options` without
`stream`, logprob field pairing, tool-calling and output-cap fields, and whether prompt +
completion fit. Fields refused whole never get here (`fields.screen`).
"""

from __future__ import annotations

from npu_serve.errors import InvalidParameter, PromptTooLong
from npu_serve.sampling_params import SamplingParams
from npu_serve.server.config import ServerConfig
from npu_serve.server.protocol import ChatCompletionRequest, CompletionRequest, _SamplingFields

_LOGIT_BIAS_LIMIT = 100.0  # OpenAI's (and vLLM's) clamp


def check_request(req: _SamplingFields) -> None:
    """Rules that do not depend on the prompt. Raises InvalidParameter naming the field.
    (Fields refused whole are refused earlier, by `fields.screen`, from docs/api-fields.md.)"""
    if req.stream_options is not None and not req.stream:
        raise InvalidParameter("stream_options", "`stream_options` can only be defined when `stream=True`.")
    if req.prompt_logprobs is not None and req.stream:
        # Stream chunks have no place for them (current vLLM refuses the same way).
        raise InvalidParameter("prompt_logprobs", "`prompt_logprobs` are not available when `stream=True`.")
    if isinstance(req, ChatCompletionRequest):
        if req.top_logprobs is not None:
            if not req.logprobs:
                raise InvalidParameter("top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true.")
            if req.top_logprobs < 0:
                raise InvalidParameter("top_logprobs", "`top_logprobs` must be a positive value.")
        if req.tool_choice not in (None, "none"):
            raise InvalidParameter("tool_choice", "Only tool_choice 'none' is supported by this server "
                                   "(tool calling is not implemented).")
        if req.tools and req.tool_choice != "none":
            raise InvalidParameter("tools", "Tool calling is not supported by this server; send tool_choice 'none' "
                                   "to have the tools only rendered into the prompt by the chat template.")
        if req.continue_final_message and req.add_generation_prompt:
            raise InvalidParameter("continue_final_message", "Cannot set both `continue_final_message` and "
                                   "`add_generation_prompt` to true.")
        chat_max_tokens(req)


def chat_max_tokens(req: ChatCompletionRequest) -> int | None:
    """The chat output cap from `max_completion_tokens` (OpenAI's current name) or `max_tokens`.
    Both with different values is a 400 naming both: we cannot tell which one the client meant."""
    new, old = req.max_completion_tokens, req.max_tokens
    if new is None:
        return old
    if old is not None and old != new:
        raise InvalidParameter("max_completion_tokens", f"`max_completion_tokens` ({new}) and `max_tokens` ({old}) "
                               "disagree; send one of them (max_tokens is the deprecated name).")
    if new < 1:
        raise InvalidParameter("max_completion_tokens", f"max_completion_tokens must be at least 1, got {new}.")
    return new


def resolve_max_tokens(requested: int | None, default: int | None, prompt_tokens: int, max_model_len: int,
                       prompt_param: str) -> int:
    """vLLM 0.6.0's context rule: no max_tokens means "fill the context"; otherwise prompt +
    max_tokens must fit. Raises PromptTooLong with the message the MaaS contract quotes."""
    max_tokens = requested if requested is not None else default
    if max_tokens is None:
        if prompt_tokens >= max_model_len:
            # At least one completion token is implied; say so in the same message shape.
            raise PromptTooLong(max_model_len, prompt_tokens, 1, param=prompt_param)
        return max_model_len - prompt_tokens
    if max_tokens >= 1 and prompt_tokens + max_tokens > max_model_len:
        raise PromptTooLong(max_model_len, prompt_tokens, max_tokens, param=prompt_param)
    return max_tokens


def _logit_bias(raw: dict[str, float] | None, vocab_size: int) -> dict[int, float] | None:
    if raw is None:
        return None
    bias: dict[int, float] = {}
    for key, value in raw.items():
        try:
            token_id = int(key)
        except ValueError:
            raise InvalidParameter("logit_bias", f"logit_bias keys must be token ids, got {key!r}.") from None
        if not 0 <= token_id < vocab_size:
            raise InvalidParameter("logit_bias", f"token_id(s) [{token_id}] in logit_bias contain out-of-vocab token ids.")
        bias[token_id] = max(-_LOGIT_BIAS_LIMIT, min(_LOGIT_BIAS_LIMIT, value))
    return bias


def sampling_params(req: ChatCompletionRequest | CompletionRequest, cfg: ServerConfig, max_tokens: int,
                    vocab_size: int) -> SamplingParams:
    """Build the engine's SamplingParams; SamplingParams itself raises InvalidParameter on bad values."""
    if isinstance(req, ChatCompletionRequest):
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
    else:
        logprobs = req.logprobs
    return SamplingParams(
        n=req.n,
        best_of=req.best_of,
        temperature=cfg.default_temperature if req.temperature is None else req.temperature,
        top_p=cfg.default_top_p if req.top_p is None else req.top_p,
        top_k=cfg.default_top_k if req.top_k is None else req.top_k,
        min_p=req.min_p,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        logit_bias=_logit_bias(req.logit_bias, vocab_size),
        max_tokens=max_tokens,
        min_tokens=req.min_tokens,
        stop=req.stop,
        stop_token_ids=req.stop_token_ids,
        include_stop_str_in_output=req.include_stop_str_in_output,
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        prompt_logprobs=req.prompt_logprobs,
        skip_special_tokens=req.skip_special_tokens,
        use_beam_search=req.use_beam_search,
        length_penalty=req.length_penalty,
        early_stopping=req.early_stopping,
    )
