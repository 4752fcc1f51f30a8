"""GateMiddleware as pure ASGI: what is refused before the app runs, and what the app then sees."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from npu_serve.engine.client import EngineStats
from npu_serve.server.admission import AdmissionController
from npu_serve.server.config import ServerConfig
from npu_serve.server.gate import BodyTooLarge, GateMiddleware, request_context

FLAT = {"object", "message", "type", "param", "code"}


class Refusals:
    def __init__(self):
        self.reasons = []

    def refused(self, reason):
        self.reasons.append(reason)


def make_state(waiting=0, **config):
    engine = SimpleNamespace(stats=lambda: EngineStats(0, waiting, 0, 10, 0, 0, 0))
    cfg = ServerConfig(**config)
    return SimpleNamespace(config=cfg, drain=SimpleNamespace(draining=False), engine=engine, ready=True,
                           admission=AdmissionController(cfg.max_num_waiting_requests, cfg.max_num_waiting_tokens),
                           metrics=Refusals(), inflight=0)


class App:
    """Reads the whole body, then answers 200 with what it saw."""

    def __init__(self, state):
        self.state = state
        self.calls = 0
        self.seen = None

    async def __call__(self, scope, receive, send):
        self.calls += 1
        ctx = request_context(scope)
        self.seen = {"inflight": self.state.inflight, "ticket": ctx.ticket, "in_transit": self.state.admission.in_transit}
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def call(app, path="/v1/completions", method="POST", chunks=(b"{}",), content_length=True):
    headers = [(b"content-type", b"application/json")]
    if content_length:
        headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": headers, "state": {}}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(m):
        sent.append(m)

    async def run():
        await app(scope, receive, send)

    asyncio.run(run())
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def test_content_length_over_the_limit_is_refused_before_the_app():
    state = make_state(max_request_body_bytes=100)
    inner = App(state)
    status, headers, body = call(GateMiddleware(inner, state), chunks=(b"x" * 101,))
    err = json.loads(body)
    assert status == 413 and set(err) == FLAT and err["code"] == 413 and "100 bytes" in err["message"]
    assert headers["connection"] == "close" and inner.calls == 0
    assert state.metrics.reasons == ["body_too_large"]
    assert call(GateMiddleware(App(state), state), chunks=(b"x" * 100,))[0] == 200


def test_chunked_body_over_the_limit_raises_inside_the_app_after_at_most_the_limit():
    state = make_state(max_request_body_bytes=100)
    gate = GateMiddleware(App(state), state)
    with pytest.raises(BodyTooLarge):  # Starlette's exception handlers turn it into the 413 (e2e tests)
        call(gate, chunks=(b"x" * 60, b"x" * 60, b"x" * 10**6), content_length=False)
    assert state.inflight == 0 and state.admission.in_transit == 0  # nothing leaks on the way out
    assert call(gate, chunks=(b"x" * 50, b"x" * 50), content_length=False)[0] == 200


def test_draining_refuses_api_requests_only():
    state = make_state()
    state.drain.draining = True
    inner = App(state)
    status, headers, body = call(GateMiddleware(inner, state))
    assert status == 503 and headers["retry-after"] == "1" and set(json.loads(body)) == FLAT and inner.calls == 0
    assert call(GateMiddleware(inner, state), path="/health", method="GET", chunks=(b"",))[0] == 200
    assert state.metrics.reasons == ["draining"]


def test_admission_refuses_generation_requests_when_the_queue_is_full():
    state = make_state(waiting=4, max_num_waiting_requests=4, retry_after_s=3)
    inner = App(state)
    status, headers, body = call(GateMiddleware(inner, state))
    assert status == 503 and headers["retry-after"] == "3" and "too many requests" in json.loads(body)["message"]
    assert inner.calls == 0 and state.metrics.reasons == ["waiting_requests"]
    # Other routes are not generation: admitted whatever the queue.
    assert call(GateMiddleware(inner, state), path="/v1/models", method="GET", chunks=(b"",))[0] == 200
    # MaaS's prefixed route is a generation route too.
    assert call(GateMiddleware(inner, state), path="/v1/infers/abc/v1/chat/completions")[0] == 503


def test_an_admitted_request_holds_a_ticket_and_counts_in_flight_until_it_returns():
    state = make_state(waiting=2, max_num_waiting_requests=4)
    inner = App(state)
    assert call(GateMiddleware(inner, state))[0] == 200
    assert inner.seen["inflight"] == 1 and inner.seen["in_transit"] == 1 and inner.seen["ticket"] is not None
    assert state.inflight == 0 and state.admission.in_transit == 0 and not inner.seen["ticket"].open


def test_refusals_by_status_are_counted_on_api_paths():
    state = make_state()

    async def teapot(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    call(GateMiddleware(teapot, state))
    call(GateMiddleware(teapot, state), path="/nothing", method="GET")  # not an API path: not counted
    assert state.metrics.reasons == ["not_found"]
