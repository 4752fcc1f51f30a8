"""log_queue: the caller only queues a record; one thread writes it through the logger's own handlers."""

from __future__ import annotations

import io
import logging
import threading

from npu_serve.server import log_queue


class Blocking(logging.Handler):
    """Writes only once released: stands in for a stdout pipe nobody is reading."""

    def __init__(self):
        super().__init__()
        self.opened = threading.Event()
        self.lines: list[str] = []

    def emit(self, record):
        self.opened.wait(30)
        self.lines.append(self.format(record))


def test_a_blocked_output_does_not_block_the_caller_and_nothing_is_lost():
    logger = logging.getLogger("npu-serve-test.log-queue.blocked")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = Blocking()
    logger.addHandler(handler)
    log_queue.move_off_loop((logger.name,))
    for i in range(50):
        logger.info("line %d", i)  # would wait 30 s on the first line if it ran the handler itself
    assert handler.lines == [] and not log_queue.flush(timeout=0.2)
    handler.opened.set()
    assert log_queue.flush()
    assert handler.lines == [f"line {i}" for i in range(50)]


def test_each_logger_keeps_its_handlers_and_their_levels():
    a, b = logging.getLogger("npu-serve-test.log-queue.a"), logging.getLogger("npu-serve-test.log-queue.b")
    out_a, out_b, warn_b = io.StringIO(), io.StringIO(), io.StringIO()
    for logger, streams in ((a, [(out_a, logging.NOTSET)]), (b, [(out_b, logging.NOTSET), (warn_b, logging.WARNING)])):
        logger.propagate = False
        logger.setLevel(logging.INFO)
        for stream, level in streams:
            h = logging.StreamHandler(stream)
            h.setLevel(level)
            logger.addHandler(h)
    log_queue.move_off_loop((a.name, b.name))
    log_queue.move_off_loop((a.name, b.name))  # idempotent: not queued twice
    assert len(a.handlers) == 1 and len(b.handlers) == 1
    a.info("to a")
    b.info("to b")
    b.warning("b warns")
    b.debug("below the logger's level")
    assert log_queue.flush()
    assert out_a.getvalue() == "to a\n"
    assert out_b.getvalue() == "to b\nb warns\n"
    assert warn_b.getvalue() == "b warns\n"


def test_a_failing_handler_does_not_stop_the_writer(capsys):
    logger = logging.getLogger("npu-serve-test.log-queue.failing")
    logger.propagate = False
    good = io.StringIO()

    class Broken(logging.Handler):
        def emit(self, record):
            raise OSError("disk full")

    broken = Broken()
    logger.addHandler(broken)
    logger.addHandler(logging.StreamHandler(good))
    log_queue.move_off_loop((logger.name,))
    logger.warning("first")
    logger.warning("second")
    assert log_queue.flush()
    assert good.getvalue() == "first\nsecond\n"
    assert "disk full" in capsys.readouterr().err  # logging's own handleError report
