"""The engine watchdog through a live server: a step that hangs past --step-timeout, or an engine
loop that dies, turns /health to 503 and answers every waiting request with 503 instead of hanging.

The hang is real: the model's forward blocks on an event inside the engine thread (the executor is
wrapped, nothing else is changed), exactly as a wedged device call would block it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.e2e.conftest import LiveServer
from tests.e2e.ops_util import metric, scrape
from tests.executor_wrapper import ExecutorWrapper

FLAT = {"object", "message", "type", "param", "code"}


def make_server(tiny_llama_dir, **engine_kw) -> LiveServer:
    from npu_serve import AsyncEngine
    from npu_serve.server.app import build_app
    from npu_serve.server.config import ServerConfig

    engine = AsyncEngine(model=str(tiny_llama_dir), device="cpu", dtype="float32", max_model_len=256,
                         num_kv_blocks=64, **engine_kw)
    server = LiveServer(build_app(engine, ServerConfig(served_model_name="tiny", warmup=False))).start()
    return server


class Hang(ExecutorWrapper):
    """Wraps the engine's executor: once armed, the next forward blocks until released."""

    def __init__(self, executor):
        super().__init__(executor)
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def execute(self, so):
        if self.armed and so.scheduled:
            self.entered.set()
            self.release.wait(60)
        return self.real.execute(so)


def test_a_stuck_step_fails_waiting_requests_with_503(tiny_llama_dir):
    server = make_server(tiny_llama_dir, step_timeout=1.0)
    engine = server.engine
    hang = Hang(engine.core.executor)
    engine.core.executor = hang
    try:
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 8}
        assert server.post("/v1/completions", body).status_code == 200  # fine before the hang
        hang.armed = True
        with ThreadPoolExecutor(3) as pool:
            t0 = time.monotonic()
            futures = [pool.submit(server.post, "/v1/completions", {**body, "stream": s}, timeout=30)
                       for s in (False, True, False)]
            assert hang.entered.wait(10)
            responses = [f.result() for f in futures]
            elapsed = time.monotonic() - t0
        for r in responses:
            err = r.json()
            assert r.status_code == 503 and set(err) == FLAT and "stuck" in err["message"], r.text
            assert r.headers["Retry-After"]
        assert elapsed < 10, f"waiting requests hung {elapsed:.1f} s"
        health = requests.get(server.url + "/health", timeout=10)
        assert health.status_code == 503 and "stuck" in health.json()["message"]
        later = server.post("/v1/completions", body)
        assert later.status_code == 503 and "stuck" in later.json()["message"]
        assert requests.get(server.url + "/metrics", timeout=10).status_code == 200  # still observable
    finally:
        hang.release.set()
        server.stop()


def test_a_dead_engine_loop_turns_health_503_and_answers_503(tiny_llama_dir):
    server = make_server(tiny_llama_dir)
    engine = server.engine
    real_step = engine.core.step
    gate = threading.Event()

    def broken_step(*a, **kw):
        gate.wait(30)
        raise RuntimeError("scheduler invariant broken (injected)")

    try:
        engine.core.step = broken_step
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(server.post, "/v1/completions", {"model": "tiny", "prompt": "hi", "stream": s},
                                   timeout=30) for s in (False, True)]
            time.sleep(0.3)
            gate.set()
            responses = [f.result() for f in futures]
        for r in responses:
            assert r.status_code == 503 and "engine loop died" in r.json()["message"], r.text
        health = requests.get(server.url + "/health", timeout=10)
        assert health.status_code == 503 and "engine loop died" in health.json()["message"]
        later = server.post("/v1/completions", {"model": "tiny", "prompt": "hi"})
        assert later.status_code == 503 and later.headers["Retry-After"]
        assert metric(scrape(server), "npu_serve:request_refused_total", reason="unavailable") == 3
    finally:
        engine.core.step = real_step
        server.stop()


@pytest.mark.parametrize("value,device,expected", [(None, "cpu", None), (0, "cpu", None), (5, "cpu", 5.0)])
def test_step_timeout_setting_reaches_the_engine(tiny_llama_dir, value, device, expected):
    from npu_serve import AsyncEngine

    engine = AsyncEngine(model=str(tiny_llama_dir), device=device, dtype="float32", num_kv_blocks=16,
                         step_timeout=value)
    try:
        assert engine.watchdog.timeout_s == expected
        assert engine.is_healthy and engine.dead_reason is None
    finally:
        import asyncio

        asyncio.run(engine.shutdown())
        assert not engine.is_healthy and engine.dead_reason == "the engine was shut down"
