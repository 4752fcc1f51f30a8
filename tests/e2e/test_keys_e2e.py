"""API keys through the real server: every /v1 route (root and MaaS prefix) needs a key, /health is
open, keys made and removed with the `npu-serve keys` CLI work (or stop working) within a second."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import openai
import pytest
import requests

from npu_serve.server.keys import KeyStore
from tests.e2e.conftest import LiveServer

DIRECT_KEY = "sk-direct-key-for-e2e"
PREFIX = "/v1/infers/0b9a3c6e-6f0d-4a53-9c11-7e5d2f1b8a44/v1"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
COMPLETION = {"model": "tiny", "prompt": "hi", "max_tokens": 2, "temperature": 0}


def keys_cli(*args: str) -> subprocess.CompletedProcess:
    """The real `npu-serve` entry point (cli.main), in its own process, as an operator runs it."""
    return subprocess.run([sys.executable, "-c", "import sys; from npu_serve.cli import main; sys.exit(main())",
                           "keys", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def keyed(tiny_server, tmp_path_factory):
    from npu_serve.server.app import build_app
    from npu_serve.server.config import ServerConfig

    db = tmp_path_factory.mktemp("keys") / "keys.db"
    secret = KeyStore(db).create("first", "made before the server started")
    config = ServerConfig(served_model_name="tiny", keys_db=str(db), api_keys=(DIRECT_KEY,), warmup=False)
    server = LiveServer(build_app(tiny_server.engine, config)).start()
    yield server, db, secret
    server.stop()


def call(server, method, path, key=None, body=None):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return requests.request(method, server.url + path, json=body, headers=headers, timeout=60)


ROUTES = [("GET", "/models", None), ("POST", "/chat/completions", CHAT), ("POST", "/completions", COMPLETION)]


@pytest.mark.parametrize("base", ["/v1", PREFIX])
@pytest.mark.parametrize("method, route, body", ROUTES)
def test_every_route_needs_a_key(keyed, base, method, route, body):
    server, _, secret = keyed
    for bad in (None, "wrong", secret + "x", "-".join(secret.split("-", 2)[:2])):  # last: the public prefix
        r = call(server, method, base + route, bad, body)
        assert r.status_code == 401, (bad, r.text)
        err = r.json()
        assert err["object"] == "error" and err["type"] == "AuthenticationError" and err["code"] == 401
    for good in (secret, DIRECT_KEY):
        r = call(server, method, base + route, good, body)
        assert r.status_code == 200, r.text


def test_health_open_and_unprotected_by_keys(keyed):
    server, _, _ = keyed
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_streaming_needs_a_key_and_streams_with_one(keyed):
    server, _, secret = keyed
    body = dict(CHAT, stream=True)
    assert call(server, "POST", PREFIX + "/chat/completions", None, body).status_code == 401
    r = call(server, "POST", PREFIX + "/chat/completions", secret, body)
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")


def test_openai_sdk_on_maas_prefix(keyed):
    server, _, secret = keyed
    good = openai.OpenAI(api_key=secret, base_url=server.url + PREFIX, max_retries=0)
    reply = good.chat.completions.create(model="tiny", messages=CHAT["messages"], max_tokens=2)
    assert reply.choices[0].finish_reason in ("stop", "length")
    bad = openai.OpenAI(api_key="sk-nope", base_url=server.url + PREFIX, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tiny", messages=CHAT["messages"], max_tokens=2)


def wait_status(server, key, status, timeout=1.0) -> float:
    start = time.monotonic()
    while True:
        got = call(server, "GET", PREFIX + "/models", key).status_code
        if got == status:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"still {got} after {timeout}s"
        time.sleep(0.02)


def test_cli_keys_hot_add_and_delete(keyed):
    server, db, secret = keyed
    made = keys_cli("create", "--label", "hot", "--description", "made while serving", "--keys-db", str(db))
    assert made.returncode == 0, made.stderr
    new = next(line for line in made.stdout.splitlines() if line.startswith("nps-"))
    assert made.stdout.count(new) == 1
    wait_status(server, new, 200)
    listed = keys_cli("list", "--keys-db", str(db))
    assert "hot" in listed.stdout and "made while serving" in listed.stdout
    assert new not in listed.stdout and secret not in listed.stdout
    gone = keys_cli("delete", "--label", "hot", "--keys-db", str(db))
    assert gone.returncode == 0, gone.stderr
    wait_status(server, new, 401)
    assert call(server, "GET", "/v1/models", secret).status_code == 200  # the others still work
    raw = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))
    assert new.encode() not in raw and secret.encode() not in raw


def test_cli_rule_errors_exit_2(keyed):
    _, db, _ = keyed
    for args in (("create", "--label", "bad label", "--description", "d"),
                 ("create", "--label", "first", "--description", "duplicate"),
                 ("create", "--label", "x", "--description", "d" * 101),
                 ("delete", "--label", "ghost")):
        r = keys_cli(*args, "--keys-db", str(db))
        assert r.returncode == 2 and r.stderr.startswith("error: "), (args, r.stderr)


def test_auth_off_is_announced(tiny_server, caplog):
    from npu_serve.server.app import build_app
    from npu_serve.server.config import ServerConfig

    with caplog.at_level(logging.WARNING):
        build_app(tiny_server.engine, ServerConfig(served_model_name="tiny"))
    assert "auth is off" in caplog.text
    # And the unkeyed server indeed serves without a key.
    assert requests.get(tiny_server.url + "/v1/models", timeout=10).status_code == 200
