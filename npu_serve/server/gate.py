"""GateMiddleware: what gets in. Pure ASGI, outermost, so a refusal costs no body read and no JSON.

In order, for every HTTP request:
1. A body larger than `max_request_body_bytes` is refused with 413: at once when Content-Length
   says so, else (chunked) as soon as the bytes read pass the limit: `receive` raises BodyTooLarge,
   an APIError the exception handlers answer with the flat body, so at most the limit is buffered.
2. While draining (SIGTERM), every API request (`/v1...`) gets 503 + Retry-After.
3. A generation request (POST .../completions) passes admission (admission.py) or gets 503 +
   Retry-After; an admitted one carries its Ticket in `RequestContext` until the engine has it.

It also keeps `RequestContext` (arrival time, ticket, refusal reason) in the ASGI scope's state for
the handlers, counts the API requests in flight (the drain waits for them), and counts every
refusal (a 4xx or 503 answer before any stream began) in `npu_serve:request_refused_total`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from npu_serve.server.admission import AdmissionController, Ticket
from npu_serve.server.errors import APIError, error_body

CONTEXT_KEY = "npu_serve"  # scope["state"][CONTEXT_KEY] -> RequestContext
_API = re.compile(r"^/+v1(/|$)", re.IGNORECASE)
_GENERATION = re.compile(r"^/+v1(/infers/[^/]+/v1)?/(chat/)?completions/?$", re.IGNORECASE)
# The `reason` label of a refusal nobody named more precisely, by status.
_REASONS = {400: "invalid_request", 401: "unauthorized", 403: "moderation", 404: "not_found",
            405: "method_not_allowed", 413: "body_too_large", 422: "invalid_request", 503: "unavailable"}
DRAINING = "draining"
BODY_TOO_LARGE = "body_too_large"


@dataclass
class RequestContext:
    arrival: float  # time.monotonic() when the request reached the gate
    ticket: Ticket | None = None
    refusal: str | None = None  # the refusal reason label, where the refusing code knows better


def request_context(scope: dict) -> RequestContext | None:
    return (scope.get("state") or {}).get(CONTEXT_KEY)


class BodyTooLarge(APIError):
    def __init__(self, limit: int):
        super().__init__(413, f"The request body is larger than this server accepts ({limit} bytes; "
                              "--max-request-body-bytes).", err_type="RequestTooLargeError")


def refusal_reason(status: int) -> str:
    return _REASONS.get(status, f"http_{status}")


class GateMiddleware:
    def __init__(self, app, state: Any):
        self.app = app
        self.state = state  # ServerState: config, admission, drain, metrics, engine, inflight

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext(arrival=time.monotonic())
        scope.setdefault("state", {})[CONTEXT_KEY] = ctx
        path = scope.get("path", "")
        api = bool(_API.match(path))
        if api:
            send = self._counting(send, ctx)
        limit = self.state.config.max_request_body_bytes
        length = _content_length(scope)
        if length is not None and length > limit:
            ctx.refusal = BODY_TOO_LARGE
            await _refuse(send, BodyTooLarge(limit))
            return
        if api and self.state.drain.draining:
            ctx.refusal = DRAINING
            await _refuse(send, APIError(503, "The server is shutting down; retry on another instance."),
                          self.state.config.retry_after_s)
            return
        if api and scope.get("method") == "POST" and _GENERATION.match(path):
            admission: AdmissionController = self.state.admission
            engine = self.state.engine if self.state.ready else None
            reason = admission.refusal(engine.stats() if engine is not None else None)
            if reason is not None:
                ctx.refusal = reason
                await _refuse(send, APIError(503, admission.message(reason)), self.state.config.retry_after_s)
                return
            ctx.ticket = admission.admit()
            # Let the refusals that arrived in the same burst go first: an admitted request's
            # parsing and tokenizing run without a pause, and must not delay a cheap 503.
            await asyncio.sleep(0)
        if api:
            self.state.inflight += 1
        try:
            await self.app(scope, _limited(receive, limit, ctx), send)
        finally:
            if ctx.ticket is not None:
                ctx.ticket.submitted()
            if api:
                self.state.inflight -= 1

    def _counting(self, send, ctx: RequestContext):
        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if 400 <= status < 500 or status == 503:
                    self.state.metrics.refused(ctx.refusal or refusal_reason(status))
            await send(message)

        return counting_send


def _limited(receive, limit: int, ctx: RequestContext):
    received = 0

    async def limited_receive():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                ctx.refusal = BODY_TOO_LARGE
                raise BodyTooLarge(limit)
        return message

    return limited_receive


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed one itself
    return None


async def _refuse(send, err: APIError, retry_after: int | None = None) -> None:
    body = json.dumps(error_body(err.status, err.message, err.param, err.err_type), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if err.status == 413:
        headers.append((b"connection", b"close"))  # the unread body must not be parsed as a request
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
