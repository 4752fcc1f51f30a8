"""A client that goes away aborts its request at once and every KV block is free again.

Raw sockets, so the test controls exactly when the connection drops. The requests would run for
many seconds (hundreds of tokens of the real model, ignore_eos), so blocks freed within a few
seconds of the drop prove an abort, not a normal finish.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.e2e.conftest import API_KEY, SMOL_NAME


def open_request(server, body: dict) -> socket.socket:
    raw = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw)
    return sock


def wait_until(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def body(stream: bool, content: str = "Write a very long story.", max_tokens: int = 900) -> dict:
    return {"model": SMOL_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0, "stream": stream}


def assert_freed_quickly(server, dropped_at: float):
    used, total = server.wait_kv_free(timeout=5.0)
    assert used == 0, f"{used} of {total} blocks still held after the client left"
    assert time.monotonic() - dropped_at < 5.0


def test_disconnect_mid_stream(smol_server):
    sock = open_request(smol_server, body(stream=True))
    received = b""
    while received.count(b"data: ") < 4:  # role chunk + a few tokens
        received += sock.recv(65536)
    assert b"200 OK" in received
    assert smol_server.engine.kv_cache_usage()[0] > 0
    sock.close()
    assert_freed_quickly(smol_server, time.monotonic())


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_mid_prefill(smol_server, stream):
    # ~900 prompt tokens in chunks of 256 (the fixture's max_num_batched_tokens): several steps.
    sock = open_request(smol_server, body(stream, content="hello " * 850, max_tokens=60))
    wait_until(lambda: smol_server.engine.kv_cache_usage()[0] > 0)
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(1)  # nothing sent yet: the first token does not exist, we are mid-prefill
    sock.close()
    assert_freed_quickly(smol_server, time.monotonic())


def test_disconnect_non_streaming_mid_generation(smol_server):
    sock = open_request(smol_server, body(stream=False))
    wait_until(lambda: smol_server.engine.kv_cache_usage()[0] > 0)
    time.sleep(0.5)  # well into decoding
    sock.close()
    assert_freed_quickly(smol_server, time.monotonic())
    # And the server keeps serving.
    r = smol_server.post("/v1/chat/completions", body(stream=False, max_tokens=2))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
