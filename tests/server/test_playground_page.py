"""The playground's routes (no browser): where the page is served, that it stays outside the key check
while every API call stays inside it, --no-playground, and what the static files may contain."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from npu_serve.cli import build_parser, server_config
from npu_serve.server.app import build_app
from npu_serve.server.config import ServerConfig
from npu_serve.server.playground import static_files

KEY = "sk-playground-0123"
ROOT = Path(__file__).resolve().parents[2]
PREFIX = "/v1/infers/8b7f4a52-5c1d-4e3f-9a0b-2c6d8e1f3a47"


def client(**config) -> TestClient:
    # No lifespan: the engine never loads; the page and the key check do not need it.
    return TestClient(build_app(lambda: None, ServerConfig(served_model_name="m", **config)), follow_redirects=False)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.inputs: dict[str, dict[str, str | None]] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [a[k] for k in ("src", "href") if a.get(k)]
        if tag == "input" and a.get("id"):
            self.inputs[a["id"]] = a


def _page() -> _Refs:
    refs = _Refs()
    refs.feed(static_files()["index.html"].decode())
    return refs


@pytest.mark.parametrize("base", ["", PREFIX])
def test_page_and_its_files_are_served_without_a_key_at_the_root_and_under_the_prefix(base):
    c = client(api_keys=(KEY,))
    r = c.get(base + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    refs = _page().refs
    assert refs and all(ref.startswith("playground/") for ref in refs), refs  # relative: the prefix carries over
    for ref in refs:
        f = c.get(f"{base}/{ref}")
        assert f.status_code == 200, ref
        assert f.content == static_files()[ref.removeprefix("playground/")]
        assert f.headers["x-content-type-options"] == "nosniff"
    assert c.get(base + "/playground/chat.js").headers["content-type"].startswith("text/javascript")
    assert c.get(base + "/playground/playground.css").headers["content-type"].startswith("text/css")
    head = c.head(base + "/")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 1000


def test_the_bare_prefix_redirects_to_the_slash_form_the_relative_urls_need():
    c = client(api_keys=(KEY,))
    r = c.get(PREFIX)
    assert r.status_code == 308 and r.headers["location"] == PREFIX + "/"
    # An id that decodes to what no header may carry stays percent-encoded in the Location.
    r = c.get("/v1/infers/%E6%9C%8D%0D%0Ax")
    assert r.status_code == 308 and r.headers["location"] == "/v1/infers/%E6%9C%8D%0D%0Ax/"


def test_every_api_call_of_the_page_still_needs_the_key():
    c = client(api_keys=(KEY,))
    auth = {"Authorization": f"Bearer {KEY}"}
    for base in ("", PREFIX):
        for path in ("/v1/models",):
            assert c.get(base + path).status_code == 401
            assert c.get(base + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post(base + "/v1/chat/completions", json={}).status_code == 401
    # Under the prefix /metrics is behind the key like all of /v1; at the root it is open by default.
    assert c.get(PREFIX + "/metrics").status_code == 401
    ok = c.get(PREFIX + "/metrics", headers=auth)
    assert ok.status_code == 200 and "npu_serve:request_refused_total" in ok.text
    assert c.get("/metrics").status_code == 200
    # What is not one of the page's files falls through to the app (and its key check).
    for path in (PREFIX + "/playground/nope.js", PREFIX + "/playground/", PREFIX + "/x"):
        assert c.get(path).status_code == 401, path
    assert c.get("/playground/nope.js").status_code == 404
    assert c.get("/playground/index.html").status_code == 404  # the page only where its relative URLs work
    assert c.post("/", json={}).status_code in (404, 405)
    assert c.post(PREFIX + "/", json={}).status_code == 401


def test_no_playground_turns_it_off():
    args = build_parser().parse_args(["serve", "--no-playground"])
    assert server_config(args).playground is False
    assert server_config(build_parser().parse_args(["serve"])).playground is True
    c = client(playground=False)
    assert c.get("/").status_code == 404
    assert c.get("/playground/chat.js").status_code == 404
    assert client(playground=False, api_keys=(KEY,)).get(PREFIX + "/").status_code == 401


def test_static_files_load_nothing_from_elsewhere():
    files = static_files()
    assert {"index.html", "playground.css", "api.js", "chat.js", "dashboard.js", "promtext.js", "chart.js"} <= set(files)
    for name, body in files.items():
        text = body.decode()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name  # no host named
        assert "@import" not in text and "url(" not in text, name
    for ref in _page().refs:
        assert ref.removeprefix("playground/") in files, ref


def test_the_files_are_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "npu_serve.server.playground"]
    for name in static_files():
        assert any(fnmatch.fnmatch(f"static/{name}", g) for g in globs), name


def test_the_sampling_controls_start_at_the_servers_defaults():
    inputs, d = _page().inputs, ServerConfig()
    assert float(inputs["p-temperature"]["value"]) == d.default_temperature
    assert float(inputs["p-top_p"]["value"]) == d.default_top_p
    assert int(inputs["p-top_k"]["value"]) == d.default_top_k
    assert d.default_chat_max_tokens is None and inputs["p-max_tokens"].get("value") is None  # until EOS
    assert float(inputs["p-presence_penalty"]["value"]) == 0.0 == float(inputs["p-frequency_penalty"]["value"])
    assert inputs["p-seed"].get("value") is None and "checked" not in inputs["p-ignore_eos"]
