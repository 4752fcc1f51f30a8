"""Refusals through a live server: status, and the flat vLLM 0.6.0 error body naming the parameter."""

from __future__ import annotations

import pytest
import requests

MSGS = [{"role": "user", "content": "hi"}]


def flat(r: requests.Response, status: int, param: str | None, err_type: str = "BadRequestError") -> dict:
    body = r.json()
    assert r.status_code == status, body
    assert set(body) == {"object", "message", "type", "param", "code"}
    assert (body["object"], body["type"], body["param"], body["code"]) == ("error", err_type, param, status)
    return body


@pytest.mark.parametrize("extra,param", [
    ({"n": 2, "temperature": 0}, "n"),  # n > 1 needs sampling
    ({"n": 2, "temperature": 1.0, "top_k": 1}, "n"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"temperature": -0.5}, "temperature"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"length_penalty": 2.0}, "length_penalty"),  # needs use_beam_search
    ({"use_beam_search": True, "n": 1, "temperature": 0}, "n"),  # beam search needs n > 1
    ({"use_beam_search": True, "n": 2, "temperature": 0.5}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream: true
    ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"99999999": 5}}, "logit_bias"),
    ({"temprature": 0.5}, "temprature"),  # unknown field
    ({"max_tokens": "lots"}, "max_tokens"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_refusal_names_the_parameter(tiny_server, path, extra, param):
    base = {"model": "tiny", "messages": MSGS} if "chat" in path else {"model": "tiny", "prompt": "hi"}
    body = flat(tiny_server.post(path, {**base, **extra}), 400, param)
    assert param in body["message"]
    if param == "temprature":
        assert "extra_forbidden" in body["message"]


def test_unknown_model_404(tiny_server):
    body = flat(tiny_server.post("/v1/chat/completions", {"model": "gpt-4", "messages": MSGS}), 404, "model",
                "NotFoundError")
    assert body["message"] == "The model `gpt-4` does not exist."


def test_malformed_json_400(tiny_server):
    r = requests.post(tiny_server.url + "/v1/chat/completions", data=b'{"model": "tiny", "messages": [',
                      headers={"Content-Type": "application/json"})
    body = flat(r, 400, None)
    assert "Malformed JSON" in body["message"]


def test_prompt_over_the_context_400(tiny_server):
    tok = tiny_server.engine.tokenizer
    max_len = tiny_server.engine.max_model_len
    prompt = "hello " * (max_len - 10)
    n_prompt = len(tok.encode(prompt))
    assert n_prompt + 100 > max_len
    body = flat(tiny_server.post("/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 100}),
                400, "prompt")
    assert body["message"] == (
        f"This model's maximum context length is {max_len} tokens. However, you requested {n_prompt + 100} "
        f"tokens ({n_prompt} in the messages, 100 in the completion). Please reduce the length of the messages "
        "or completion.")
    # Chat counts the tokens of the chat template, not just the message text.
    messages = [{"role": "user", "content": prompt}]
    n_chat = len(tok.encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                            add_special_tokens=False))
    body = flat(tiny_server.post("/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 100}),
                400, "messages")
    assert f"({n_chat} in the messages, 100 in the completion)" in body["message"]
    assert n_chat > n_prompt


def test_unknown_path_and_method(tiny_server):
    flat(requests.get(tiny_server.url + "/v1/nothing"), 404, None, "NotFoundError")
    assert requests.get(tiny_server.url + "/v1/chat/completions").status_code == 405


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_request_failing_in_the_engine_is_a_500_with_its_message(tiny_server, path, stream):
    """The engine fails the request in its first step (a device fault, a model the backend
    mishandles): the client gets a 500 naming the engine's error, streamed or not, never a 200 with an
    empty or error-only body, and the request's blocks are freed."""
    from tests.e2e.conftest import FailingExecutor

    base = {"model": "tiny", "messages": MSGS} if "chat" in path else {"model": "tiny", "prompt": "hi"}
    core = tiny_server.engine.core
    real = core.executor
    core.executor = FailingExecutor(real, fail_at=1)
    try:
        r = tiny_server.post(path, {**base, "max_tokens": 5, "stream": stream})
    finally:
        core.executor = real
    body = flat(r, 500, None, "InternalServerError")
    assert body["message"] == "RuntimeError: injected device fault"
    assert tiny_server.wait_kv_free()[0] == 0
