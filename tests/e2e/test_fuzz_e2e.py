"""Fuzzing the contract: schemathesis reads /openapi.json of a real server (tiny random model) and
sends generated requests, valid and invalid, to every route. Zero 5xx, zero hangs, every status and
body as documented, every 4xx with the flat error body (moderation's 403 with MaaS's body).

CI runs FUZZ_CASES cases (derandomized, so every run sends the same ones); NPU_SERVE_TEST_LONG=1
runs LONG_FUZZ_CASES. The server is set up so that valid requests are cheap but still exercise the
engine: a 96-token context, 16 new tokens unless asked otherwise, n <= 4, a small KV pool, a
moderation word the random model writes.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance, not_a_server_error, response_headers_conformance, response_schema_conformance,
    status_code_conformance,
)

from npu_serve.server.caps import RequestCaps
from npu_serve.server.moderation import MODERATION_ERROR_BODY
from tests.e2e.conftest import LiveServer

LONG = os.environ.get("NPU_SERVE_TEST_LONG") == "1"
FUZZ_CASES = 300
LONG_FUZZ_CASES = 1500
KEY = "sk-fuzz-0123456789"
FLAT = {"object", "message", "type", "param", "code"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.fixture(scope="module")
def fuzz_server(tiny_llama_dir, tmp_path_factory):
    from npu_serve import AsyncEngine
    from npu_serve.server.app import build_app
    from npu_serve.server.config import ServerConfig

    words = tmp_path_factory.mktemp("fuzz") / "words.txt"
    words.write_text("the\n", encoding="utf-8")  # common in generated text: moderation paths get exercised

    def factory():
        return AsyncEngine(model=str(tiny_llama_dir), device="cpu", dtype="float32", max_model_len=96,
                           max_num_batched_tokens=96, num_kv_blocks=128)

    # A chat request without max_tokens gets 16 (the server's --default-chat-max-tokens), not the context.
    config = ServerConfig(served_model_name="tiny", api_keys=(KEY,), moderation_words=str(words),
                          caps=RequestCaps(max_n=4), max_request_body_bytes=256 * 1024, default_chat_max_tokens=16)
    server = LiveServer(build_app(factory, config), headers={"Authorization": f"Bearer {KEY}"}).start()
    yield server
    server.stop()


def expected_body(response) -> None:
    """Every 4xx/5xx has the flat body naming its own status; moderation keeps MaaS's body."""
    status = response.status_code
    if status < 400:
        return
    body = response.json()
    if status == 403:
        assert body == MODERATION_ERROR_BODY, body
        return
    assert set(body) == FLAT and body["code"] == status and body["object"] == "error", body
    if status == 503:
        assert response.headers.get("Retry-After"), response.headers


def steer(body, draw, mode) -> object:
    """Generated bodies name a random model (a 404) and valid ones set many fields at once (mostly a
    400): aim most at the served model, and most valid ones at a few fields, so the engine runs too."""
    # (Hypothesis favours small integers, so the rarer branch is the largest value.)
    if not isinstance(body, dict) or draw(st.integers(0, 3)) == 3:
        return body
    if mode is GenerationMode.POSITIVE:
        keep = {"model", "messages", "prompt"} | set(draw(st.lists(st.sampled_from(sorted(body) or ["model"]),
                                                                    max_size=3)))
        body = {k: v for k, v in body.items() if k in keep}
    return {**body, "model": "tiny"}


def test_fuzz_every_route(fuzz_server):
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    doc = requests.get(fuzz_server.url + "/openapi.json", timeout=10).json()
    documented = {f"{m.upper()} {p}" for p, item in doc["paths"].items() for m in item}
    # Every route but the document itself (schemathesis leaves out the URL it loaded the schema from).
    assert {op.label for op in operations} == documented - {"GET /openapi.json"}
    generation = [op for op in operations if op.method.upper() == "POST"]
    weighted = operations + generation * 6  # most cases where most of the logic is
    seen: Counter = Counter()
    slowest: list = []
    cases = LONG_FUZZ_CASES if LONG else FUZZ_CASES

    @settings(max_examples=cases, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data):
        op = data.draw(st.sampled_from(weighted))
        mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
        case = data.draw(op.as_strategy(generation_mode=mode))
        if op.method.upper() == "POST":
            case.body = steer(case.body, data.draw, mode)
        if data.draw(st.integers(0, 9)) != 9:  # mostly the right key; else whatever was generated (a 401)
            case.headers = {**(case.headers or {}), **fuzz_server.headers}
        t0 = time.monotonic()
        try:
            response = case.call(base_url=fuzz_server.url, timeout=60)
        except requests.Timeout:
            pytest.fail(f"hang: no answer within 60 s to {case.method} {case.formatted_path} {json.dumps(case.body)[:500]}")
        case.validate_response(response, checks=CHECKS)
        expected_body(response)
        seen[response.status_code] += 1
        slowest.append((time.monotonic() - t0, response.status_code, case.method, case.path))

    one()
    print(f"\nfuzz: {sum(seen.values())} cases, by status {dict(sorted(seen.items()))}")
    print(f"fuzz: {sum(x[0] for x in slowest):.1f} s in calls; slowest {max(slowest)}")
    assert sum(seen.values()) >= cases
    assert not [s for s in seen if s >= 500]
    assert seen[200] >= cases // 10 and seen[400] >= cases // 10  # both the engine and the refusals ran
    assert fuzz_server.wait_kv_free(timeout=10)[0] == 0
    assert requests.get(fuzz_server.url + "/health", timeout=10).status_code == 200
