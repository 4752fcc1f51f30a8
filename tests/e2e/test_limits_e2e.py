"""Limits through a live server: 413 for bodies over --max-request-body-bytes (Content-Length and
chunked alike, before the body is buffered), 400 naming the field for each per-request cap, and the
refusals counted in /metrics by reason."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests

from npu_serve.server.caps import RequestCaps
from tests.e2e.conftest import LiveServer
from tests.e2e.ops_util import metric, raw_http, scrape

LIMIT = 64 * 1024
FLAT = {"object", "message", "type", "param", "code"}
MSG = {"role": "user", "content": "hi"}


@pytest.fixture(scope="module")
def small_server(tiny_llama_dir):
    from npu_serve import AsyncEngine
    from npu_serve.server.app import build_app
    from npu_serve.server.config import ServerConfig

    def factory():
        return AsyncEngine(model=str(tiny_llama_dir), device="cpu", dtype="float32", max_model_len=256,
                           num_kv_blocks=64)

    config = ServerConfig(served_model_name="tiny", max_request_body_bytes=LIMIT, warmup=False,
                          caps=RequestCaps(max_n=4, max_stop_strings=4, max_stop_string_chars=32, max_messages=8,
                                           max_logit_bias_entries=8, max_logprobs=5, max_stop_token_ids=8))
    server = LiveServer(build_app(factory, config)).start()
    yield server
    server.stop()


def flat(status: int, body: bytes, want: int) -> dict:
    err = json.loads(body)
    assert status == want and set(err) == FLAT and err["code"] == want, (status, err)
    return err


@pytest.mark.parametrize("path,chunked", [("/v1/completions", False), ("/v1/completions", True),
                                          ("/v1/chat/completions", False), ("/v1/chat/completions", True),
                                          ("/v1/models", False)])  # (a chunked body GET never reads is never read)
def test_oversized_bodies_get_413(small_server, chunked, path):
    before = metric(scrape(small_server), "npu_serve:request_refused_total", reason="body_too_large")
    body = json.dumps({"model": "tiny", "prompt": "x" * (4 * LIMIT)}).encode()
    method = "GET" if path.endswith("models") else "POST"
    resp = asyncio.run(raw_http(small_server.port, method, path, body, chunked=chunked))
    err = flat(resp.status, resp.body, 413)
    assert str(LIMIT) in err["message"] and resp.headers["connection"] == "close"
    after = metric(scrape(small_server), "npu_serve:request_refused_total", reason="body_too_large")
    assert after == before + 1
    # Just under the limit still reaches the handler (a 400 for the prompt's length, not a 413).
    ok = json.dumps({"model": "tiny", "prompt": "x" * (LIMIT - 100), "max_tokens": 1}).encode()
    resp = asyncio.run(raw_http(small_server.port, "POST", "/v1/completions", ok, chunked=chunked))
    assert resp.status == 400 and json.loads(resp.body)["param"] == "prompt"


@pytest.mark.parametrize("fields,param", [
    ({"n": 5, "temperature": 1}, "n"),
    ({"best_of": 5, "temperature": 1}, "best_of"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": "s" * 33}, "stop"),
    ({"stop_token_ids": list(range(9))}, "stop_token_ids"),
    ({"logit_bias": {str(i): 1 for i in range(9)}}, "logit_bias"),
    ({"prompt_logprobs": 6}, "prompt_logprobs"),
    ({"messages": [MSG] * 9}, "messages"),
    ({"logprobs": True, "top_logprobs": 6}, "top_logprobs"),
    ({"max_tokens": 10**12}, "messages"),  # beyond the context: the MaaS message, naming the prompt side
])
def test_each_cap_is_a_400_naming_the_field(small_server, fields, param):
    before = metric(scrape(small_server), "npu_serve:request_refused_total", reason="invalid_request")
    r = small_server.post("/v1/chat/completions", {"model": "tiny", "messages": [MSG], **fields})
    err = flat(r.status_code, r.content, 400)
    assert err["param"] == param and (param in err["message"] or "context length" in err["message"]), err
    after = metric(scrape(small_server), "npu_serve:request_refused_total", reason="invalid_request")
    assert after == before + 1


def test_completions_logprobs_cap(small_server):
    r = small_server.post("/v1/completions", {"model": "tiny", "prompt": "hi", "logprobs": 6})
    assert flat(r.status_code, r.content, 400)["param"] == "logprobs"
    r = small_server.post("/v1/completions", {"model": "tiny", "prompt": "hi", "logprobs": 5, "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_metrics_open_and_openapi_served(small_server):
    r = requests.get(small_server.url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "npu_serve:kv_cache_blocks_total" in r.text
    doc = requests.get(small_server.url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1") and "/v1/chat/completions" in doc["paths"]
