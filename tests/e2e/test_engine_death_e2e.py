"""An engine that dies while serving (EngineDeadError from a step, as a lost worker raises) fails the running stream with an in-band error, turns /health to 503 with the reason, and hands
the death to on_fatal (the CLI's exit) after a short delay. Runs in-process over the tiny model."""

from __future__ import annotations

import json
import time

import requests

from npu_serve.errors import EngineDeadError
from npu_serve.server import app as app_module
from npu_serve.server.app import build_app
from npu_serve.server.config import ServerConfig
from tests.e2e.conftest import FailingExecutor, LiveServer, read_stream, sse_lines


def test_a_dead_engine_ends_streams_answers_503_and_calls_on_fatal(tiny_llama_dir, monkeypatch):
    from npu_serve import AsyncEngine

    monkeypatch.setattr(app_module, "DEAD_EXIT_DELAY_S", 1.0)
    fatal: list[tuple[float, str]] = []
    engine = AsyncEngine(str(tiny_llama_dir), device="cpu", dtype="float32")
    dying = engine.core.executor = FailingExecutor(
        engine.core.executor, fail_at=5, error=EngineDeadError("rank 1 (pid 4242) exited with code -9"), hold=True)
    server = LiveServer(build_app(engine, ServerConfig(served_model_name="tiny", warmup=False),
                                  on_fatal=lambda m: fatal.append((time.monotonic(), m))))
    server.start()
    try:
        r = server.post("/v1/completions", {"model": "tiny", "prompt": "Hello", "max_tokens": 50, "ignore_eos": True,
                                            "temperature": 0, "stream": True}, stream=True)
        assert r.status_code == 200
        payloads = sse_lines(read_stream(r, dying.release))
        died_at = time.monotonic()
        assert payloads[-1] == "[DONE]"
        error = json.loads(payloads[-2])["error"]
        assert error["code"] == 503 and "exited with code -9" in error["message"]
        assert any(json.loads(p).get("choices") for p in payloads[:-2])  # it was streaming before the death
        health = requests.get(server.url + "/health", timeout=5)
        assert health.status_code == 503 and "exited with code -9" in health.json()["message"]
        assert server.post("/v1/completions", {"model": "tiny", "prompt": "x"}).status_code == 503
        deadline = time.monotonic() + 10
        while not fatal and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fatal and "the engine stopped" in fatal[0][1] and "exited with code -9" in fatal[0][1]
        assert fatal[0][0] - died_at > 0.5  # /health had its delay to say 503 first
        assert engine.stats().kv_blocks_used == 0 or not engine.is_healthy
    finally:
        server.stop()
