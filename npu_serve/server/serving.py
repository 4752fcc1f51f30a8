"""What the chat and completion handlers share: the server's state, body parsing, the model
check, input moderation, and running one engine request (streamed or whole) with cancellation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from npu_serve.engine.client import EngineClient
from npu_serve.outputs import RequestOutput
from npu_serve.sampling_params import SamplingParams
from npu_serve.server.admission import AdmissionController
from npu_serve.server.auth import KEY_ID_STATE
from npu_serve.server.chunks import _StreamBuilder
from npu_serve.server.config import ServerConfig
from npu_serve.server.drain import Drainer
from npu_serve.server.errors import APIError
from npu_serve.server.fields import screen
from npu_serve.server.gate import RequestContext, request_context
from npu_serve.server.metrics import ServerMetrics
from npu_serve.server.streaming import (
    ClientDisconnected, check_output, close_quietly, sse_events, sse_response, until_disconnect,
)
from npu_serve.server.tracking import ABORT, CONTENT_FILTER, ERROR, RequestRecord, RequestTracker

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
    inflight: int = 0  # API requests in flight (kept by the gate; the drain waits for 0)
    # Operations (issue 13), built from the config below.
    admission: AdmissionController = field(init=False)
    metrics: ServerMetrics = field(init=False)
    tracker: RequestTracker = field(init=False)
    drain: Drainer = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        self.admission = AdmissionController(cfg.max_num_waiting_requests, cfg.max_num_waiting_tokens)
        self.metrics = ServerMetrics(self)
        self.tracker = RequestTracker(self.metrics, cfg.log_requests)
        self.drain = Drainer(self, cfg.shutdown_timeout_s)

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
                      make_response: Callable[[RequestOutput], Response], response_id: str | None = None) -> Response:
    """Run one engine request; a disconnect at any point aborts it.

    Streaming waits for the first output before answering, so errors the engine raises up front
    (InvalidParameter, PromptTooLong, EngineDeadError) and a request that failed in its first step
    are still plain HTTP errors (a 500 with the engine's message for the latter); vLLM 0.6.0 also
    sent the role chunk only once the first output existed. The request is tracked (tracking.py)
    from submission to its end, whichever way it ends.
    """
    state = server_state(request)
    tracker = state.tracker
    ctx = request_context(request.scope)
    record = tracker.start(request_id=request_id, response_id=response_id or request_id, model=state.model_name,
                           key_id=(request.scope.get("state") or {}).get(KEY_ID_STATE),
                           arrival=ctx.arrival if ctx is not None else time.monotonic(), prompt_ids=prompt_ids,
                           n=params.n, params=params, tokenizer=engine.tokenizer)
    gen = engine.generate(prompt_ids, params, request_id)
    handed_over = False
    first: asyncio.Future | None = None
    try:
        first = await _submit(gen, ctx)
        if not stream:
            final = await until_disconnect(request, _collect(first, gen, record, tracker))
            handed_over = True  # the generator is exhausted: nothing to abort
            try:
                check_output(final, allow_abort=record.cut)
            except APIError:
                tracker.finish(record, ERROR)
                raise
            response = make_response(final)
            tracker.finish(record, override=CONTENT_FILTER if response.status_code == 403 else None)
            return response
        out = await until_disconnect(request, first)
        tracker.output(record, out)
        # Failed before anything was streamed: a plain 500, not a stream of one error.
        check_output(out, allow_abort=record.cut)
        events = sse_events(out, gen, make_builder(out), lambda: engine.abort(request_id), record, tracker)
        handed_over = True
        return sse_response(events, on_close=lambda: _closed(engine, record, tracker))
    except ClientDisconnected:
        logger.info("client disconnected; aborted %s", request_id)
        tracker.finish(record, ABORT)
        return Response(status_code=499)
    except BaseException:
        tracker.finish(record, ERROR)
        raise
    finally:
        if not handed_over:
            engine.abort(request_id)
            if first is not None and not first.done():
                first.cancel()
            await close_quietly(gen)


async def _submit(gen: AsyncIterator[RequestOutput], ctx: RequestContext | None) -> asyncio.Future:
    """Start the request: the engine's `generate` puts it into its inbox in its first, synchronous
    stretch. One `sleep(0)` lets exactly that stretch run (the task was queued just before us), so
    the admission ticket is returned when the engine counts the request, not earlier or later."""
    first = asyncio.ensure_future(anext(gen))
    await asyncio.sleep(0)
    if ctx is not None and ctx.ticket is not None:
        ctx.ticket.submitted()
    return first


async def _collect(first: Awaitable[RequestOutput], rest: AsyncIterator[RequestOutput], record: RequestRecord,
                   tracker: RequestTracker) -> RequestOutput:
    out = await first
    tracker.output(record, out)
    while not out.finished:
        nxt = await anext(rest, None)
        if nxt is None:
            break
        out = nxt
        tracker.output(record, out)
    return out


def _closed(engine: Any, record: RequestRecord, tracker: RequestTracker) -> None:
    """After a stream's response ended, however it ended: nothing the request held may outlive it."""
    if not record.done:
        engine.abort(record.request_id)
        tracker.finish(record, ABORT)
