"""Driving an engine request to an HTTP answer, with cancellation as a first-class path.

- `until_disconnect`: run a coroutine (a whole non-streaming request, or a stream's wait for its
  first output) while watching the ASGI receive channel; an `http.disconnect` cancels it at once,
  which closes the engine's generate iterator, which aborts the request and frees its KV blocks.
- `sse_events`: the body of a streaming answer. `sse_response` watches for the disconnect itself
  and cancels this generator; its `finally` aborts the engine request.
  Errors after the stream started become an in-band error event, then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse

from npu_serve.outputs import RequestOutput
from npu_serve.server.chunks import _StreamBuilder
from npu_serve.server.errors import APIError, as_api_error, streaming_error_data

logger = logging.getLogger(__name__)

DONE = "[DONE]"
T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before the answer was ready; nothing is left to send."""


async def _disconnected(receive: Any) -> None:
    """Returns when the ASGI receive channel says `http.disconnect` (the body already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` unless the client disconnects first (then cancel it and raise
    ClientDisconnected). The request body must already have been read."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
            try:
                await work
            except BaseException:  # noqa: BLE001 - we only wait for its cleanup
                pass
    if work.cancelled():
        raise ClientDisconnected()
    return work.result()


def check_output(res: RequestOutput, allow_abort: bool = False) -> None:
    """An engine-side failure of a running request arrives as a choice finishing with "error"
    (or "abort" when the engine gave up on it): surface it as an exception. `allow_abort`: the
    server itself ended the request (the drain's deadline), so "abort" is the answer."""
    failed = ("error",) if allow_abort else ("error", "abort")
    for out in res.outputs:
        if out.finish_reason is not None and str(out.finish_reason) in failed:
            message = res.error or f"The request was {'aborted' if str(out.finish_reason) == 'abort' else 'failed'} by the engine."
            raise APIError(500, message, err_type="InternalServerError")


async def sse_events(first: RequestOutput, rest: AsyncIterator[RequestOutput], builder: _StreamBuilder,
                     abort: Callable[[], None], record: Any, tracker: Any) -> AsyncIterator[str]:
    """Yield SSE `data:` payloads for one request whose first output already arrived. `tracker`
    (tracking.RequestTracker) sees every later output and the end of `record`."""
    finished = False
    ended = "abort"  # how unfinished choices count if the stream stops early (the client went away)
    try:
        try:
            for chunk in builder.start():
                yield chunk
            res: RequestOutput | None = first
            while res is not None:
                check_output(res, allow_abort=record.cut)
                for chunk in builder.on_output(res):
                    yield chunk
                if res.finished:
                    finished = True
                    break
                if builder.blocked:  # moderation ended every choice: stop generating
                    abort()
                    finished, ended = True, "content_filter"
                    break
                res = await anext(rest, None)
                if res is not None:
                    tracker.output(record, res)
            final = builder.final_usage_chunk()
            if final is not None:
                yield final
        except Exception as exc:  # noqa: BLE001 - every failure goes to the client in-band
            ended = "error"
            err = as_api_error(exc)
            if err.status >= 500:
                logger.error("stream %s failed: %s", builder.s.request_id, err.message)
            yield streaming_error_data(err)
        yield DONE
    finally:
        if not finished:
            abort()  # non-blocking; makes the engine free the blocks even if aclose below is cut short
        tracker.finish(record, ended)
        await _close(rest)


async def _close(gen: AsyncIterator) -> None:
    aclose = getattr(gen, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except BaseException:  # noqa: BLE001 - closing a cancelled generator may re-raise; it is closed
            pass


# What sse-starlette's EventSourceResponse sent for our streams (sep "\n", no pings), in its order.
_SSE_HEADERS = {"cache-control": "no-store", "connection": "keep-alive", "x-accel-buffering": "no"}
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _event_bytes(data: str) -> bytes:
    """One SSE event: `data: {line}` per line of `data`, then a blank line (`data: {...}\n\n` for
    the single-line JSON payloads every stream sends)."""
    if "\n" in data or "\r" in data:
        return "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data)).encode() + b"\n"
    return b"data: " + data.encode() + b"\n\n"


class _SSE(StreamingResponse):
    """A stream of SSE events that stops when the client goes away, then runs `on_close` (however the
    response ended: a client gone before the first chunk cancels the body before the generator ever
    started, and a generator that never started never runs its `finally`).

    Why not sse-starlette's EventSourceResponse, which this replaced with the same bytes and headers:
    each event went through an anyio cancel scope (a per-send timeout we never set), a ServerSentEvent
    and a task group's bookkeeping, on the event loop that shares the box's cores with the engine; at
    c=32 that loop used ~8% of a core (py-spy), and every CPU second it takes is one the engine's
    threads lose."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None] | None):
        super().__init__(events, headers=_SSE_HEADERS, media_type="text/event-stream")
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        streaming = asyncio.ensure_future(self._stream(send))
        watching = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((streaming, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not streaming.done():
                streaming.cancel()
            try:
                await asyncio.gather(streaming, watching, return_exceptions=True)
            finally:  # also when this task is cancelled again while the body closes (shutdown)
                if self._on_close is not None:
                    self._on_close()
        if not streaming.cancelled() and streaming.exception() is not None:
            raise streaming.exception()

    async def _stream(self, send) -> None:
        events = self.body_iterator
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for data in events:
                await send({"type": "http.response.body", "body": _event_bytes(data), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await _close(events)  # its `finally` aborts the engine request when the stream stopped early


def sse_response(events: AsyncIterator[str], on_close: Callable[[], None] | None = None) -> StreamingResponse:
    return _SSE(events, on_close)


async def close_quietly(gen: AsyncIterator) -> None:
    await _close(gen)
