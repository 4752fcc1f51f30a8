"""POST /v1/chat/completions: messages -> the model's chat template -> tokens -> engine.

Prompt tokens are those of the chat template the model uses (or `--chat-template`, or the
request's own `chat_template`), tokenized here so the context check and usage count them.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from npu_serve.errors import InvalidParameter
from npu_serve.outputs import RequestOutput
from npu_serve.server import logprobs as lp
from npu_serve.server import params as P
from npu_serve.server.caps import check_caps
from npu_serve.server.chunks import ChatStreamBuilder, StreamSettings
from npu_serve.server.protocol import (
    ChatCompletionChoice, ChatCompletionRequest, ChatCompletionResponse, ChatMessage, usage,
)
from npu_serve.server.reasoning import split_whole
from npu_serve.server.serving import (
    ServerState, check_model, moderation_refusal, parse_body, request_ids, run_request, server_state,
)


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidParameter("messages", f"Only text content parts are supported, got type {part.get('type')!r}.")
        parts.append(part["text"])
    return "\n".join(parts)


def build_prompt(state: ServerState, req: ChatCompletionRequest) -> tuple[list[dict[str, Any]], list[int]]:
    """Apply the chat template and tokenize. Template failures are the client's 400."""
    tokenizer = state.engine.tokenizer
    messages = []
    for m in req.messages:
        msg: dict[str, Any] = {"role": m.role, "content": _text_of(m.content)}
        if m.name is not None:
            msg["name"] = m.name
        messages.append(msg)
    template = req.chat_template or state.config.chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise InvalidParameter("messages", "This model has no chat template; start the server with --chat-template "
                               "or send one in the request's chat_template.")
    _check_template_reads(template, req)
    kwargs = dict(req.chat_template_kwargs or {})
    if req.reasoning_effort is not None:
        kwargs["reasoning_effort"] = req.reasoning_effort
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=req.add_generation_prompt, tokenize=False,
            continue_final_message=req.continue_final_message, tools=req.tools or None, documents=req.documents,
            **kwargs)
    except Exception as e:  # jinja raises its own zoo (raise_exception in templates, undefined vars)
        raise InvalidParameter("messages", f"The chat template could not be applied to these messages: {e}") from e
    ids = list(tokenizer.encode(text, add_special_tokens=req.add_special_tokens))
    if req.truncate_prompt_tokens is not None:
        ids = ids[-req.truncate_prompt_tokens:]
    return messages, ids


def _check_template_reads(template: str | dict[str, str], req: ChatCompletionRequest) -> None:
    """Fields whose only effect is a chat-template variable are refused when the template never
    mentions that variable: they would vanish without a trace (docs/api-fields.md). A mention,
    not a parse, decides: templates may use tags plain Jinja does not know."""
    source = template if isinstance(template, str) else "\n".join(template.values())
    for name, sent in (("tools", bool(req.tools)), ("documents", bool(req.documents)),
                       ("reasoning_effort", req.reasoning_effort is not None)):
        if sent and name not in source:
            raise InvalidParameter(name, f"`{name}` would have no effect: this model's chat template does not use it "
                                   "(send a chat_template that does, or leave the field out).")


def _role(req: ChatCompletionRequest) -> str:
    return "assistant" if req.add_generation_prompt else req.messages[-1].role


async def create_chat_completion(request: Request) -> Response:
    state = server_state(request)
    req: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest, state.config.accept_unknown_fields)
    engine = state.require_engine()
    check_model(state, req.model)
    P.check_request(req)
    check_caps(req, state.config.caps)
    messages, prompt_ids = build_prompt(state, req)
    if state.moderator is not None and state.moderator.check("\n".join(m["content"] for m in messages)):
        return moderation_refusal()
    max_tokens = P.resolve_max_tokens(P.chat_max_tokens(req), state.config.default_chat_max_tokens,
                                      len(prompt_ids), engine.max_model_len, "messages")
    params = P.sampling_params(req, state.config, max_tokens, len(engine.tokenizer))
    request_id, response_id = request_ids("chatcmpl", req.request_id)
    created = int(time.time())
    role = _role(req)
    echo = ""
    if req.echo and req.messages[-1].role == role:
        echo = _text_of(req.messages[-1].content)
    top = (req.top_logprobs or 0) if req.logprobs else None
    reasoning = state.config.reasoning_parser

    def make_builder(first: RequestOutput) -> ChatStreamBuilder:
        settings = StreamSettings.for_request(
            req, request_id=response_id, model=state.model_name, created=created,
            prompt_tokens=len(first.prompt_token_ids), logprobs_top=top, tokenizer=engine.tokenizer, echo=echo)
        return ChatStreamBuilder(settings, role=role, moderator=state.moderator, reasoning=reasoning)

    def make_response(final: RequestOutput) -> Response:
        choices = []
        for out in final.outputs:
            reasoning_content, content = split_whole(reasoning, out.text)
            if echo:
                content = echo + (content or "")
            logprobs = None
            if top is not None and out.logprobs is not None:
                logprobs = lp.chat_logprobs(out.token_ids, out.logprobs, top, engine.tokenizer)
            choices.append(ChatCompletionChoice(
                index=out.index, message=ChatMessage(role=role, content=content, reasoning_content=reasoning_content),
                logprobs=logprobs, finish_reason=str(out.finish_reason), stop_reason=out.stop_reason))
        if state.moderator is not None and any(
                state.moderator.check((c.message.reasoning_content or "") + "\n" + (c.message.content or ""))
                for c in choices):
            return moderation_refusal()
        completion_tokens = sum(len(out.token_ids) for out in final.outputs)
        body = ChatCompletionResponse(id=response_id, created=created, model=state.model_name, choices=choices,
                                      usage=usage(len(final.prompt_token_ids), completion_tokens),
                                      prompt_logprobs=lp.prompt_logprobs(final.prompt_logprobs, engine.tokenizer))
        return JSONResponse(body.model_dump())

    return await run_request(request, engine, prompt_ids, params, request_id, req.stream, make_builder, make_response,
                             response_id=response_id)
