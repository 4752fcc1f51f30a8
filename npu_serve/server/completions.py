"""POST /v1/completions: plain text (or token ids) in, continuation out."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from npu_serve.errors import InvalidParameter
from npu_serve.outputs import RequestOutput
from npu_serve.server import logprobs as lp
from npu_serve.server import params as P
from npu_serve.server.caps import check_caps
from npu_serve.server.chunks import CompletionStreamBuilder, StreamSettings
from npu_serve.server.protocol import CompletionChoice, CompletionRequest, CompletionResponse, usage
from npu_serve.server.serving import (
    ServerState, check_model, moderation_refusal, parse_body, request_ids, run_request, server_state,
)


def build_prompt(state: ServerState, req: CompletionRequest) -> tuple[str, list[int]]:
    """(prompt text, prompt token ids). One prompt per request: a string or a list of token ids
    (a one-element list of either is accepted too); batches of prompts are refused."""
    tokenizer = state.engine.tokenizer
    prompt = req.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = list(tokenizer.encode(prompt, add_special_tokens=req.add_special_tokens))
        text = prompt
    elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        vocab = len(tokenizer)
        if not prompt or any(not 0 <= t < vocab for t in prompt):
            raise InvalidParameter("prompt", f"prompt token ids must be a non-empty list of ids in [0, {vocab}).")
        ids = list(prompt)
        text = tokenizer.decode(ids)
    else:
        raise InvalidParameter("prompt", "Only one prompt per request is supported (a string or a list of token ids).")
    if not ids:
        raise InvalidParameter("prompt", "prompt must not be empty.")
    if req.truncate_prompt_tokens is not None:
        ids = ids[-req.truncate_prompt_tokens:]
    return text, ids


async def create_completion(request: Request) -> Response:
    state = server_state(request)
    req: CompletionRequest = await parse_body(request, CompletionRequest, state.config.accept_unknown_fields)
    engine = state.require_engine()
    check_model(state, req.model)
    P.check_request(req)
    check_caps(req, state.config.caps)
    if req.echo and req.logprobs is not None:
        raise InvalidParameter("echo", "echo together with logprobs is not supported by this server.")
    text, prompt_ids = build_prompt(state, req)
    if state.moderator is not None and state.moderator.check(text):
        return moderation_refusal()
    max_tokens = P.resolve_max_tokens(req.max_tokens, state.config.default_completion_max_tokens, len(prompt_ids),
                                      engine.max_model_len, "prompt")
    params = P.sampling_params(req, state.config, max_tokens, len(engine.tokenizer))
    request_id, response_id = request_ids("cmpl", req.request_id)
    created = int(time.time())
    echo = text if req.echo else ""

    def make_builder(first: RequestOutput) -> CompletionStreamBuilder:
        settings = StreamSettings.for_request(
            req, request_id=response_id, model=state.model_name, created=created,
            prompt_tokens=len(first.prompt_token_ids), logprobs_top=req.logprobs, tokenizer=engine.tokenizer,
            echo=echo)
        return CompletionStreamBuilder(settings, moderator=state.moderator)

    def make_response(final: RequestOutput) -> Response:
        if state.moderator is not None and any(state.moderator.check(out.text) for out in final.outputs):
            return moderation_refusal()
        choices = []
        prompt_lps = lp.prompt_logprobs(final.prompt_logprobs, engine.tokenizer)
        for out in final.outputs:
            logprobs = None
            if req.logprobs is not None and out.logprobs is not None:
                logprobs = lp.completion_logprobs(out.token_ids, out.logprobs, req.logprobs, engine.tokenizer)
            choices.append(CompletionChoice(index=out.index, text=echo + out.text, logprobs=logprobs,
                                            finish_reason=str(out.finish_reason), stop_reason=out.stop_reason,
                                            prompt_logprobs=prompt_lps))
        completion_tokens = sum(len(out.token_ids) for out in final.outputs)
        body = CompletionResponse(id=response_id, created=created, model=state.model_name, choices=choices,
                                  usage=usage(len(final.prompt_token_ids), completion_tokens))
        return JSONResponse(body.model_dump())

    return await run_request(request, engine, prompt_ids, params, request_id, req.stream, make_builder, make_response,
                             response_id=response_id)
