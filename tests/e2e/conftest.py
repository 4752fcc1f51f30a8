"""Live servers for the end-to-end tests: the real app under a real uvicorn on 127.0.0.1.

uvicorn runs in a thread of the test process so tests can look at the engine behind the socket
(`kv_cache_usage()` after a disconnect); clients only ever talk HTTP to it.
- `tiny_server`: the random-weight tiny Llama (fast; exact stream shapes, refusals, disconnects).
- `smol_server`: the real default model with API keys on and the qwen3 reasoning parser (greedy
  equality with the offline LLM, the three MaaS client examples, reasoning end to end).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
import uvicorn

from npu_serve.server.app import build_app
from npu_serve.server.config import ServerConfig
from tests.executor_wrapper import ExecutorWrapper

API_KEY = "sk-e2e-0123456789abcdef"
SMOL_NAME = "SmolLM2-135M-Instruct"
SMOL_MAX_LEN = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, app, headers: dict[str, str] | None = None):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = headers or {}
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def state(self):
        return self.app.state.server

    @property
    def engine(self):
        return self.state.engine

    def start(self, timeout: float = 180.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or a loaded machine
                pass
            if self.state.load_error:
                raise RuntimeError(self.state.load_error)
            time.sleep(0.1)
        raise TimeoutError("server did not become healthy")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def post(self, path: str, body, **kw) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=self.headers, timeout=kw.pop("timeout", 120), **kw)

    def wait_kv_free(self, timeout: float = 5.0) -> tuple[int, int]:
        deadline = time.monotonic() + timeout
        while True:
            usage = self.engine.kv_cache_usage()
            if usage[0] == 0 or time.monotonic() > deadline:
                return usage
            time.sleep(0.02)


@pytest.fixture(scope="session")
def tiny_server(tiny_llama_dir):
    from npu_serve import AsyncEngine

    def factory():
        return AsyncEngine(model=str(tiny_llama_dir), device="cpu", dtype="float32", max_num_batched_tokens=512)

    server = LiveServer(build_app(factory, ServerConfig(served_model_name="tiny"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smol_server(default_model_dir):
    from npu_serve import AsyncEngine

    def factory():
        return AsyncEngine(model=str(default_model_dir), device="cpu", dtype="float32", max_model_len=SMOL_MAX_LEN,
                           max_num_batched_tokens=256)

    config = ServerConfig(reasoning_parser="qwen3", api_keys=(API_KEY,))
    server = LiveServer(build_app(factory, config), headers={"Authorization": f"Bearer {API_KEY}"}).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smol_llm(default_model_dir):
    from npu_serve import LLM

    return LLM(str(default_model_dir), device="cpu", dtype="float32", max_model_len=SMOL_MAX_LEN)


def sse_lines(body: bytes) -> list[str]:
    """Split an SSE body into its `data:` payloads, checking the framing byte for byte."""
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), text[-50:]
    events = text[:-2].split("\n\n")
    for e in events:
        assert e.startswith("data: ") and "\n" not in e, e
    return [e[len("data: "):] for e in events]


class FailingExecutor(ExecutorWrapper):
    """Wraps the engine's real executor and makes its `fail_at`-th forward raise `error` (by default a
    RuntimeError, as a device fault would: an NPU/CUDA runtime error mid-generation). Everything else is
    the real engine and server: the engine fails the requests of that step with finish_reason "error",
    and the server must turn that into a 500 (before a stream starts) or an in-band error event (after).

    With `hold`, the failing step first waits (up to 60 s) for `release`, which the test sets once the
    client holds a streamed chunk (`read_stream`): otherwise, on a loaded machine, a tiny model can run
    every step up to the fault before the server sends its first chunk, and the fault is then the plain
    500 before the stream, a different case."""

    def __init__(self, real, fail_at: int = 4, error: BaseException | None = None, hold: bool = False):
        super().__init__(real)
        self.calls, self.fail_at = 0, fail_at
        self.error = error if error is not None else RuntimeError("injected device fault")
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def execute(self, so):
        if so.scheduled:
            self.calls += 1
            if self.calls == self.fail_at:
                self.release.wait(60)
                raise self.error
        return self.real.execute(so)


def read_stream(response: requests.Response, release: threading.Event) -> bytes:
    """A streamed response's whole body, with `release` set once its first event has arrived."""
    body = b""
    chunks = response.iter_content(chunk_size=None)
    while b"\n\n" not in body:
        body += next(chunks)
    release.set()
    return body + b"".join(chunks)
