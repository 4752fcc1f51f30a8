"""Driving an engine request to an HTTP answer, with cancellation as a first-class path.

- `until_disconnect`: run a coroutine (a whole non-streaming request, or a stream's wait for its
  first output) while watching the ASGI receive channel; an `http.disconnect` cancels it at once,
  which closes the engine's generate iterator, which aborts the request and frees its KV blocks.
- `sse_events`: the body of a streaming answer. sse-starlette's EventSourceResponse watches for
  the disconnect itself and cancels this generator; its `finally` aborts the engine request.
  Errors after the stream started become an in-band error event, then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request

from npu_serve.outputs import RequestOutput
from npu_serve.server.chunks import _StreamBuilder
from npu_serve.server.errors import APIError, as_api_error, streaming_error_data

logger = logging.getLogger(__name__)

DONE = "[DONE]"
T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before the answer was ready; nothing is left to send."""


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` unless the client disconnects first (then cancel it and raise
    ClientDisconnected). The request body must already have been read."""
    work = asyncio.ensure_future(awaitable)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
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


class _SSE(EventSourceResponse):
    """EventSourceResponse that runs `on_close` after the response ended, however it ended: a
    client gone before the first chunk cancels the body task before the generator ever started,
    and a generator that never started never runs its `finally`."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None] | None):
        # sep "\n": `data: {...}\n\n` exactly as vLLM writes it; no pings (vLLM sends none, and exact
        # event sequences stay exact).
        super().__init__(events, sep="\n", ping=0)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_close is not None:
                self._on_close()


def sse_response(events: AsyncIterator[str], on_close: Callable[[], None] | None = None) -> EventSourceResponse:
    return _SSE(events, on_close)


async def close_quietly(gen: AsyncIterator) -> None:
    await _close(gen)
