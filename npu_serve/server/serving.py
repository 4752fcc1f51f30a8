"""What the chat and completion handlers share: the server's state, body parsing, the model
check, input moderation, and running one engine request (streamed or whole) with cancellation.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from npu_serve.engine.client import EngineClient
from npu_serve.outputs import RequestOutput
from npu_serve.sampling_params import SamplingParams
from npu_serve.server.chunks import _StreamBuilder
from npu_serve.server.config import ServerConfig
from npu_serve.server.errors import APIError
from npu_serve.server.fields import screen
from npu_serve.server.streaming import (
    ClientDisconnected, check_output, close_quietly, sse_events, sse_response, until_disconnect,
)

logger = logging.getLogger(__name__)


@dataclass
class ServerState:
    """Everything a handler needs; lives on `app.state.server`, owned by the lifespan."""

    config: ServerConfig
    engine: EngineClient | None = None  # once loaded
    model_name: str = ""
    moderator: Any = None  # npu_serve.server.moderation.Moderator or None
    ready: bool = False  # loaded and warmed up
    load_error: str | None = None
    started: float = field(default_factory=time.time)

    def require_engine(self) -> EngineClient:
        if self.load_error is not None:
            raise APIError(503, f"The model failed to load: {self.load_error}")
        if not self.ready or self.engine is None:
            raise APIError(503, "The model is still loading; retry shortly.")
        if not self.engine.is_healthy:
            raise APIError(503, f"The engine has stopped ({self.engine.dead_reason}); the server needs a restart.")
        return self.engine


def server_state(request: Request) -> ServerState:
    return request.app.state.server


async def parse_body(request: Request, model: type[BaseModel], accept_unknown: bool = False) -> Any:
    """JSON body -> the field table (`fields.screen`, for `model.endpoint`) -> validated request
    model. Malformed JSON, a refused field or a schema violation is a 400 that names the
    offending field (the first one, in `param`; all of them in the message)."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"Malformed JSON in the request body: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.")
    data = screen(data, model.endpoint, accept_unknown)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']} [type={err['type']}]" for err in e.errors()
        )
        raise APIError(400, f"{e.error_count()} validation error(s) for {model.__name__}: {details}", param) from None


def check_model(state: ServerState, name: str) -> None:
    if name != state.model_name:
        raise APIError(404, f"The model `{name}` does not exist.", param="model", err_type="NotFoundError")


def moderation_refusal() -> JSONResponse:
    from npu_serve.server.moderation import MODERATION_ERROR_BODY

    return JSONResponse(MODERATION_ERROR_BODY, status_code=403)


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def request_ids(prefix: str, given: str | None) -> tuple[str, str]:
    """(engine request id, response id). The engine's id is always fresh, so two requests sending
    the same `request_id` never collide; the response id is `<prefix>-<request_id>` when the
    client sent one (as vLLM answers), else the engine's id."""
    engine_id = new_request_id(prefix)
    return engine_id, (f"{prefix}-{given}" if given is not None else engine_id)


async def run_request(request: Request, engine: EngineClient, prompt_ids: list[int], params: SamplingParams,
                      request_id: str, stream: bool,
                      make_builder: Callable[[RequestOutput], _StreamBuilder],
                      make_response: Callable[[RequestOutput], Response]) -> Response:
    """Run one engine request; a disconnect at any point aborts it.

    Streaming waits for the first output before answering, so errors the engine raises up front
    (InvalidParameter, PromptTooLong, EngineDeadError) and a request that failed in its first step
    are still plain HTTP errors (a 500 with the engine's message for the latter); vLLM 0.6.0 also
    sent the role chunk only once the first output existed.
    """
    gen = engine.generate(prompt_ids, params, request_id)
    handed_over = False
    try:
        if not stream:
            final = await until_disconnect(request, _last(gen))
            if final is None:
                raise APIError(500, "The engine returned no output.")
            handed_over = True  # the generator is exhausted: nothing to abort
            check_output(final)
            return make_response(final)
        first = await until_disconnect(request, anext(gen))
        check_output(first)  # failed before anything was streamed: a plain 500, not a stream of one error
        events = sse_events(first, gen, make_builder(first), lambda: engine.abort(request_id))
        handed_over = True
        return sse_response(events)
    except ClientDisconnected:
        logger.info("client disconnected; aborted %s", request_id)
        return Response(status_code=499)
    finally:
        if not handed_over:
            engine.abort(request_id)
            await close_quietly(gen)


async def _last(gen: AsyncIterator[RequestOutput]) -> RequestOutput | None:
    final = None
    async for out in gen:
        final = out
    return final
