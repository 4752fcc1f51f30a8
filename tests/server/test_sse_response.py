"""The SSE response (server/streaming.py's sse_response) as an ASGI app: the exact bytes and headers,
and what happens to the event generator and `on_close` when the client goes away or the body fails."""

from __future__ import annotations

import asyncio

import pytest

from npu_serve.server.streaming import sse_response

HEADERS = [(b"cache-control", b"no-store"), (b"connection", b"keep-alive"), (b"x-accel-buffering", b"no"),
           (b"content-type", b"text/event-stream; charset=utf-8")]


class Client:
    """The ASGI side of one request whose body was already read: `receive` blocks until `leave()`."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def leave(self) -> None:
        self.gone.set()

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


def run(app, client: Client, during=None, after=None) -> None:
    """Runs the app to its end; `after()` runs before the event loop closes (closing the loop would
    finalise any generator left suspended, hiding whether the response closed it)."""
    async def main() -> None:
        task = asyncio.ensure_future(app({"type": "http"}, client.receive, client.send))
        if during is not None:
            await during()
        try:
            await asyncio.wait_for(task, 5)
        finally:
            if after is not None:
                after()
    asyncio.run(main())


def test_bytes_and_headers_as_sse_starlette_sent_them():
    closed = []

    async def events():
        yield '{"a":1}'
        yield "two\nlines\r\nand\rthree"
        yield "[DONE]"

    client = Client()
    run(sse_response(events(), on_close=lambda: closed.append(True)), client)
    start = client.sent[0]
    assert start == {"type": "http.response.start", "status": 200, "headers": HEADERS}
    assert client.bodies() == [b'data: {"a":1}\n\n', b"data: two\ndata: lines\ndata: and\ndata: three\n\n",
                               b"data: [DONE]\n\n", b""]
    assert [m["more_body"] for m in client.sent[1:]] == [True, True, True, False]
    assert closed == [True]


def test_client_gone_while_waiting_stops_the_generator_and_closes():
    state = {"finally": False}
    closed = []
    waiting = asyncio.Event()

    async def events():
        try:
            yield "first"
            waiting.set()
            await asyncio.sleep(3600)  # an engine with nothing to say yet
            yield "never"
        finally:
            state["finally"] = True

    client = Client()

    async def leave_after_first() -> None:
        await waiting.wait()
        client.leave()

    run(sse_response(events(), on_close=lambda: closed.append(True)), client, leave_after_first)
    assert client.bodies() == [b"data: first\n\n"]  # nothing after it, no closing chunk to a gone client
    assert state["finally"] and closed == [True]


def test_client_gone_before_the_first_event_still_closes():
    closed = []
    started = []

    async def events():
        started.append(True)
        await asyncio.sleep(3600)
        yield "never"

    client = Client()
    client.leave()
    run(sse_response(events(), on_close=lambda: closed.append(True)), client)
    assert closed == [True]
    assert client.bodies() == []


def test_a_failing_body_raises_after_closing():
    closed = []

    async def events():
        yield "ok"
        raise RuntimeError("boom")

    client = Client()
    with pytest.raises(RuntimeError, match="boom"):
        run(sse_response(events(), on_close=lambda: closed.append(True)), client)
    assert client.bodies() == [b"data: ok\n\n"] and closed == [True]


def test_client_gone_during_a_send_closes_the_suspended_generator():
    """The generator waits at its `yield` while a send blocks (a slow socket): only closing it runs its
    `finally`, which is what aborts the engine request."""
    state = {"finally": False}

    async def events():
        try:
            yield "first"
            yield "second"
        finally:
            state["finally"] = True

    class SlowClient(Client):
        async def send(self, message: dict) -> None:
            self.sent.append(message)
            if message.get("body") == b"data: first\n\n":
                self.leave()
                await asyncio.sleep(3600)

    client = SlowClient()
    gen = events()  # held here, so that only the response can finalise it
    seen = {}
    run(sse_response(gen, on_close=None), client, after=lambda: seen.update(state))
    assert seen["finally"]


def test_cancelled_twice_while_closing_still_closes():
    """The server cancels the response (shutdown) and cancels again while the body is still closing:
    `on_close` runs anyway (it ends the request's bookkeeping)."""
    closed = []
    closing = asyncio.Event()

    async def events():
        try:
            yield "first"
            await asyncio.sleep(3600)
            yield "never"
        finally:
            closing.set()
            await asyncio.sleep(3600)  # a slow cleanup

    client = Client()

    async def main() -> None:
        task = asyncio.ensure_future(sse_response(events(), on_close=lambda: closed.append(True))(
            {"type": "http"}, client.receive, client.send))
        while not client.bodies():
            await asyncio.sleep(0)
        task.cancel()
        await closing.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert closed == [True]
