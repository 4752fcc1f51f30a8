"""/metrics: open by default, behind the API key with --metrics-require-key (which needs keys)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from npu_serve.server.app import build_app
from npu_serve.server.config import ServerConfig

KEY = "sk-metrics-0123"


def client(**config) -> TestClient:
    # No lifespan: the engine never loads; the server-side metrics exist from the start.
    return TestClient(build_app(lambda: None, ServerConfig(served_model_name="m", **config)))


def test_open_by_default_even_with_keys():
    r = client(api_keys=(KEY,)).get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"npu_serve:prompt_tokens", "npu_serve:request_success", "npu_serve:time_to_first_token_seconds"} <= names


def test_behind_the_key_when_asked():
    c = client(api_keys=(KEY,), metrics_require_key=True)
    r = c.get("/metrics")
    assert r.status_code == 401 and r.json()["type"] == "AuthenticationError"
    assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert c.get("/health").status_code == 503  # still open (loading), never behind the key


def test_require_key_without_keys_is_refused_at_start():
    with pytest.raises(ValueError, match="metrics-require-key"):
        build_app(lambda: None, ServerConfig(metrics_require_key=True))


def test_each_app_has_its_own_registry():
    a, b = client(), client()
    a.app.state.server.metrics.refused("x")
    assert 'reason="x"' in a.get("/metrics").text and 'reason="x"' not in b.get("/metrics").text
