"""Bearer-key middleware under a real uvicorn on 127.0.0.1, hit with requests and the openai SDK."""

from __future__ import annotations

import socket
import threading
import time

import openai
import pytest
import requests
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from npu_serve.server.auth import ApiKeyAuthMiddleware, bearer_token, is_protected
from npu_serve.server.keys import KeyStore, KeyVerifier

MODELS = {"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": "npu-serve"}]}


async def models(request):
    return JSONResponse(MODELS)


async def health(request):
    return PlainTextResponse("ok")


async def version(request):
    return JSONResponse({"version": "test"})


async def stream(request):
    async def chunks():
        for i in range(3):
            yield f"data: {i}\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")


def build_app(verifier: KeyVerifier):
    app = Starlette(routes=[
        Route("/v1/models", models),
        Route("/v1/infers/{service_id}/v1/models", models),
        Route("/v1/stream", stream),
        Route("/health", health),
        Route("/version", version),
    ])
    return ApiKeyAuthMiddleware(app, verifier)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """(base_url, store, db secret, direct key) for a live server with auth on."""
    db = tmp_path / "keys.db"
    store = KeyStore(db)
    secret = store.create("tester", "test key")
    verifier = KeyVerifier.from_config(str(db), ["direct-key-123"])
    port = free_port()
    config = uvicorn.Config(build_app(verifier), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        if time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", store, secret, "direct-key-123"
    srv.should_exit = True
    thread.join(timeout=10)


PROTECTED = ["/v1/models", "/v1/infers/3f1e2c9a-8b7d-4e6f-9a0b-1c2d3e4f5a6b/v1/models", "/v1/stream"]


def assert_401(resp):
    assert resp.status_code == 401
    body = resp.json()
    assert body["object"] == "error" and body["type"] == "AuthenticationError" and body["code"] == 401
    assert body["param"] is None and body["message"]
    assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", PROTECTED)
def test_every_v1_route_needs_a_key(server, path):
    base, _, secret, direct = server
    assert_401(requests.get(base + path))
    assert_401(requests.get(base + path, headers={"Authorization": "Bearer wrong"}))
    assert_401(requests.get(base + path, headers={"Authorization": f"Bearer {secret}x"}))
    assert_401(requests.get(base + path, headers={"Authorization": f"Basic {secret}"}))
    assert_401(requests.get(base + path, headers={"Authorization": "Bearer "}))
    assert_401(requests.get(base + path, headers={"X-Api-Key": secret}))
    for key in (secret, direct):
        ok = requests.get(base + path, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200, ok.text


def test_missing_and_wrong_key_messages_differ(server):
    base, *_ = server
    missing = requests.get(base + "/v1/models").json()["message"]
    wrong = requests.get(base + "/v1/models", headers={"Authorization": "Bearer nope"}).json()["message"]
    assert "Authorization: Bearer" in missing and wrong == "Invalid API key."


def test_unknown_v1_paths_and_posts_are_refused_before_routing(server):
    base, *_ = server
    assert_401(requests.get(base + "/v1/does-not-exist"))
    assert_401(requests.post(base + "/v1/chat/completions", json={"model": "tiny", "messages": []}))
    assert_401(requests.get(base + "/V1/models"))


def test_health_and_version_stay_open(server):
    base, *_ = server
    assert requests.get(base + "/health").text == "ok"
    assert requests.get(base + "/version").json() == {"version": "test"}
    assert requests.get(base + "/health", headers={"Authorization": "Bearer wrong"}).status_code == 200


def test_streaming_passes_through(server):
    base, _, secret, _ = server
    resp = requests.get(base + "/v1/stream", headers={"Authorization": f"Bearer {secret}"}, stream=True)
    assert resp.status_code == 200
    assert resp.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"


@pytest.mark.parametrize("prefix", ["/v1", "/v1/infers/6a1d2c3b-0000-4000-8000-123456789abc/v1"])
def test_openai_sdk(server, prefix):
    base, _, secret, _ = server
    good = openai.OpenAI(api_key=secret, base_url=base + prefix, max_retries=0)
    assert [m.id for m in good.models.list().data] == ["tiny"]
    bad = openai.OpenAI(api_key="sk-wrong", base_url=base + prefix, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.status_code == 401
    assert "Invalid API key" in str(info.value)


def test_hot_add_and_delete_through_http(server):
    base, store, secret, _ = server
    new = store.create("hot", "added while serving")
    headers = {"Authorization": f"Bearer {new}"}
    deadline = time.monotonic() + 1.0
    while requests.get(base + "/v1/models", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "new key not accepted within a second"
        time.sleep(0.02)
    store.delete("hot")
    deadline = time.monotonic() + 1.0
    while requests.get(base + "/v1/models", headers=headers).status_code != 401:
        assert time.monotonic() < deadline, "deleted key still accepted after a second"
        time.sleep(0.02)
    assert requests.get(base + "/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200


def test_is_protected():
    for path in ("/v1", "/v1/models", "//v1/models", "/V1/models", "/v1/infers/x/v1/chat/completions"):
        assert is_protected(path), path
    for path in ("/health", "/version", "/", "/metrics", "/health/v1"):
        assert not is_protected(path), path


def test_bearer_token_parsing():
    assert bearer_token([(b"authorization", b"Bearer abc")]) == "abc"
    assert bearer_token([(b"authorization", b"bearer   abc  ")]) == "abc"
    assert bearer_token([(b"authorization", b"Token abc")]) is None
    assert bearer_token([(b"authorization", b"Bearer")]) is None
    assert bearer_token([(b"content-type", b"application/json")]) is None
