"""DrainingServer: the first signal drains (the server stops once nothing is in flight), a second one
stops at once; no signal is re-raised afterwards. (The real process, SIGTERM and exit code 0 are in
tests/e2e/test_process_e2e.py; here handle_exit is called as the signal handler would be.)"""

from __future__ import annotations

import signal
import socket
import threading
import time
from types import SimpleNamespace

import uvicorn

from npu_serve.server.drain import Drainer
from npu_serve.server.signals import DrainingServer


async def app(scope, receive, send):  # pragma: no cover - never called
    pass


def start(inflight: int, timeout_s: float = 30.0):
    state = SimpleNamespace(inflight=inflight, tracker=SimpleNamespace(active={}), engine=None)
    drainer = Drainer(state, timeout_s)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"),
                            drainer)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return server, drainer, state, thread


def test_first_signal_drains_and_stops_once_idle():
    server, drainer, state, thread = start(inflight=1)
    server.handle_exit(signal.SIGTERM, None)
    time.sleep(0.5)
    assert drainer.draining and thread.is_alive() and not server.should_exit  # one request still runs
    state.inflight = 0
    thread.join(10)
    assert not thread.is_alive() and not server.forced and server.signals == [signal.SIGTERM]
    assert server._captured_signals == []  # nothing for uvicorn to re-raise: the process exits 0


def test_second_signal_stops_at_once():
    server, drainer, state, thread = start(inflight=1)
    server.handle_exit(signal.SIGTERM, None)
    time.sleep(0.3)
    assert thread.is_alive()
    t0 = time.monotonic()
    server.handle_exit(signal.SIGINT, None)
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - t0 < 3 and server.forced


def test_drain_deadline_cuts_what_still_runs():
    aborted = []
    record = SimpleNamespace(request_id="r1", cut=False)
    server, drainer, state, thread = start(inflight=1, timeout_s=0.3)
    state.tracker.active["r1"] = record
    state.engine = SimpleNamespace(abort=lambda rid: (aborted.append(rid), setattr(state, "inflight", 0)))
    server.handle_exit(signal.SIGTERM, None)
    thread.join(10)
    assert not thread.is_alive() and aborted == ["r1"] and record.cut and not server.forced
