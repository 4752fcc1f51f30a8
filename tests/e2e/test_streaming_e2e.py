"""Exact SSE sequences through a live server (tiny model, greedy or seeded, ignore_eos for fixed lengths)."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import FailingExecutor, read_stream, sse_lines

CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "Tell me a story about a cat."}]


def chat_body(**kw):
    body = {"model": "tiny", "messages": MSGS, "temperature": 0, "max_tokens": 8, "ignore_eos": True}
    body.update(kw)
    return body


def stream(server, path, body) -> tuple[list[dict], list[str]]:
    r = server.post(path, body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    payloads = sse_lines(r.content)
    assert payloads[-1] == "[DONE]" and "[DONE]" not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]], payloads


def check_head(chunks, obj, request_id_prefix, model="tiny"):
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith(request_id_prefix)
    assert {c["object"] for c in chunks} == {obj}
    assert {c["model"] for c in chunks} == {model}
    assert len({c["created"] for c in chunks}) == 1


def test_chat_stream_without_usage(tiny_server):
    whole = tiny_server.post(CHAT, chat_body()).json()
    chunks, _ = stream(tiny_server, CHAT, chat_body(stream=True))
    check_head(chunks, "chat.completion.chunk", "chatcmpl-")
    assert all("usage" not in c for c in chunks)
    assert all(set(c) == {"id", "object", "created", "model", "choices"} for c in chunks)
    first, *middle, last = [c["choices"] for c in chunks]
    assert first == [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}]
    for choices in middle:
        (choice,) = choices
        assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}
        assert choice["finish_reason"] is None and set(choice["delta"]) == {"content"} and choice["delta"]["content"]
    (end,) = last
    assert end["finish_reason"] == "length" and end["stop_reason"] is None and end["logprobs"] is None
    text = "".join(c[0]["delta"]["content"] for c in middle) + end["delta"]["content"]
    assert text == whole["choices"][0]["message"]["content"]
    assert whole["usage"]["completion_tokens"] == 8 and whole["choices"][0]["finish_reason"] == "length"


def test_chat_stream_include_usage(tiny_server):
    whole = tiny_server.post(CHAT, chat_body()).json()
    chunks, payloads = stream(tiny_server, CHAT, chat_body(stream=True, stream_options={"include_usage": True}))
    *body, final = chunks
    assert all(c["usage"] is None for c in body) and all(len(c["choices"]) == 1 for c in body)
    assert final["choices"] == [] and set(final) == {"id", "object", "created", "model", "choices", "usage"}
    assert final["usage"] == whole["usage"] == {"prompt_tokens": whole["usage"]["prompt_tokens"],
                                                "total_tokens": whole["usage"]["prompt_tokens"] + 8,
                                                "completion_tokens": 8}
    # Wire order of usage keys as MaaS documents: prompt, total, completion.
    assert payloads[-2].endswith('"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":8}}'
                                 % (final["usage"]["prompt_tokens"], final["usage"]["total_tokens"]))


def test_chat_stream_continuous_usage(tiny_server):
    opts = {"include_usage": True, "continuous_usage_stats": True}
    chunks, _ = stream(tiny_server, CHAT, chat_body(stream=True, stream_options=opts))
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts[0] == 0 and counts == sorted(counts) and counts[-2] == counts[-1] == 8


def test_chat_stream_n2(tiny_server):
    body = chat_body(stream=True, n=2, temperature=1.0, seed=1234, stream_options={"include_usage": True})
    chunks, _ = stream(tiny_server, CHAT, body)
    *body_chunks, final = chunks
    assert [c["choices"][0] for c in body_chunks[:2]] == [
        {"index": i, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None} for i in (0, 1)]
    for i in (0, 1):
        mine = [c["choices"][0] for c in body_chunks if c["choices"][0]["index"] == i]
        assert [m["finish_reason"] for m in mine] == [None] * (len(mine) - 1) + ["length"]
    assert all(len(c["choices"]) == 1 for c in body_chunks)
    assert final["usage"]["completion_tokens"] == 16  # summed over both choices (vLLM 0.6.0 said 8)


def test_completion_stream_stop_string(tiny_server):
    base = {"model": "tiny", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 24, "ignore_eos": True}
    text = tiny_server.post("/v1/completions", base).json()["choices"][0]["text"]
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip(), f"pick another prompt: {text!r}"
    expected = text[: text.find(stop)]
    chunks, _ = stream(tiny_server, "/v1/completions", {**base, "stream": True, "stop": [stop]})
    check_head(chunks, "text_completion", "cmpl-")
    assert all(set(c["choices"][0]) == {"index", "text", "logprobs", "finish_reason", "stop_reason"} for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert chunks[-1]["choices"][0]["stop_reason"] == stop
    whole = tiny_server.post("/v1/completions", {**base, "stop": stop}).json()["choices"][0]
    assert (whole["text"], whole["finish_reason"], whole["stop_reason"]) == (expected, "stop", stop)


def test_error_mid_stream_is_an_error_event_then_done(tiny_server):
    core = tiny_server.engine.core
    real = core.executor
    failing = core.executor = FailingExecutor(real, hold=True)
    try:
        r = tiny_server.post(CHAT, chat_body(stream=True, max_tokens=50, stream_options={"include_usage": True}),
                             stream=True)
        assert r.status_code == 200
        payloads = sse_lines(read_stream(r, failing.release))
    finally:
        core.executor = real
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert any(c.get("choices") and c["choices"][0]["delta"].get("content") for c in chunks[1:-1])
    assert chunks[-1] == {"error": {"object": "error", "message": "RuntimeError: injected device fault",
                                    "type": "InternalServerError", "param": None, "code": 500}}
    assert tiny_server.wait_kv_free()[0] == 0
    # The engine survived the fault: the next request is served normally.
    assert tiny_server.post(CHAT, chat_body()).status_code == 200


@pytest.mark.parametrize("prefix", ["", "/v1/infers/3f1c0a52-8d1e-4c2b-9a77-1b2c3d4e5f60"])
def test_routes_at_root_and_under_maas_prefix(tiny_server, prefix):
    import requests

    models = requests.get(tiny_server.url + prefix + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    assert models["data"][0]["object"] == "model"
    r = tiny_server.post(prefix + "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 3,
                                                      "ignore_eos": True})
    body = r.json()
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 3


def test_health_and_version(tiny_server):
    import requests

    assert requests.get(tiny_server.url + "/health").status_code == 200
    assert "version" in requests.get(tiny_server.url + "/version").json()


def test_openai_sdk_raises_on_the_in_band_error(tiny_server):
    import openai

    # No retries: a fault before the stream (a 500) must not be retried into a stream without one.
    client = openai.OpenAI(api_key="unused", base_url=tiny_server.url + "/v1", max_retries=0)
    core = tiny_server.engine.core
    real = core.executor
    failing = core.executor = FailingExecutor(real, hold=True)
    try:
        stream = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=50, temperature=0,
                                                stream=True)
        with pytest.raises(openai.APIError, match="injected device fault"):
            for _ in stream:
                failing.release.set()  # the fault comes after the first chunk
    finally:
        core.executor = real
    assert tiny_server.wait_kv_free()[0] == 0
