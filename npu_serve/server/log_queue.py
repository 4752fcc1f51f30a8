"""Log output off the event loop: records are queued there and formatted and written by one thread.

Every HTTP answer writes an access-log line (uvicorn's), and every finished request one of ours. On
the event loop, that formatting and the write to stdout (a pipe, when an orchestrator or a test reads
it) took ~60% of a 503's cost (py-spy). tests/e2e/test_process_e2e.py's overload burst (100 requests
against a full queue, 2 cores, one of them held by another process), median of 6 bursts' refusal p99:
27-34 ms without an access log, 57-59 ms with it on the loop, 36-37 ms with it queued here. Queued, a
record costs the loop one `put`.

`move_off_loop()` replaces the handlers of the root logger and of uvicorn's loggers (those that have
handlers: uvicorn's access and error loggers do not propagate) with one `_Enqueue` handler each, which
passes (the original handlers, the record) to a daemon thread; the thread runs those handlers as the
logger would have (each handler's own level still applies). `flush()` waits until everything queued
so far is written; it runs at exit, so the last lines (a fatal error, the drain's summary) are not lost.

Not the standard library's QueueHandler/QueueListener: QueueHandler.prepare() formats each record on
the caller's thread (the cost we move), and one QueueListener serves one fixed set of handlers, where
each logger here keeps its own.

A record's message is formatted later, on the thread: its arguments must not change after the call.
uvicorn's access records carry strings and an int; ours log strings and numbers.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading

LOGGERS = ("", "uvicorn", "uvicorn.access", "uvicorn.error")  # "" is the root logger

_queue: queue.SimpleQueue = queue.SimpleQueue()
_writer: threading.Thread | None = None
_lock = threading.Lock()


class _Enqueue(logging.Handler):
    """Stands in for one logger's handlers: hands each record, with them, to the writer thread."""

    def __init__(self, handlers: list[logging.Handler]):
        super().__init__(logging.NOTSET)
        self.handlers = handlers

    def emit(self, record: logging.LogRecord) -> None:
        _queue.put((self.handlers, record))


def _write_forever() -> None:
    while True:
        handlers, record = _queue.get()
        if record is None:  # a flush() marker: everything queued before it is written
            handlers.set()
            continue
        for handler in handlers:
            if record.levelno >= handler.level:
                try:
                    handler.handle(record)  # the handler's filters and lock, as in Logger.callHandlers
                except Exception:  # an emit() that raises instead of reporting: the thread must go on
                    handler.handleError(record)


def move_off_loop(names: tuple[str, ...] = LOGGERS) -> None:
    """Route the named loggers' output through the writer thread (idempotent)."""
    global _writer
    with _lock:
        if _writer is None:
            _writer = threading.Thread(target=_write_forever, name="npu-serve-log", daemon=True)
            _writer.start()
            atexit.register(flush)
        for name in names:
            logger = logging.getLogger(name)
            own = [h for h in logger.handlers if not isinstance(h, _Enqueue)]
            if own:
                for h in own:
                    logger.removeHandler(h)
                logger.addHandler(_Enqueue(own))


def flush(timeout: float = 5.0) -> bool:
    """Wait until every record queued so far is written; False if the writer did not get there in time."""
    if _writer is None or not _writer.is_alive():
        return True
    done = threading.Event()
    _queue.put((done, None))
    return done.wait(timeout)
