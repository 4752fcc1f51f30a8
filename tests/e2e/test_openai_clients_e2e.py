"""Today's OpenAI clients, unchanged, against a live server under the MaaS per-service prefix: the
openai SDK with `max_completion_tokens` (the name it and reasoning-model clients use for the output
cap), streaming and not, and langchain-openai's ChatOpenAI `invoke` and `stream` (which send
`max_completion_tokens` for `max_tokens`)."""

from __future__ import annotations

import openai
import pytest

SERVICE = "8b7f4a52-5c1d-4e3f-9a0b-2c6d8e1f3a47"  # a MaaS service uuid; any value routes the same
MSGS = [{"role": "user", "content": "Tell me a story."}]


def base_url(server) -> str:
    return f"{server.url}/v1/infers/{SERVICE}/v1"


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(api_key="sk-any", base_url=base_url(tiny_server), max_retries=0)


def direct(server, **extra) -> dict:
    """The same request in plain JSON at the root path, for comparison."""
    r = server.post("/v1/chat/completions", {"model": "tiny", "messages": MSGS, "temperature": 0, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_sdk_max_completion_tokens(tiny_server, client):
    resp = client.chat.completions.create(model="tiny", messages=MSGS, max_completion_tokens=6, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 6 and resp.choices[0].finish_reason == "length"
    want = direct(tiny_server, max_tokens=6, ignore_eos=True)
    assert resp.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert resp.usage.prompt_tokens == want["usage"]["prompt_tokens"]


def test_sdk_max_completion_tokens_streaming(tiny_server, client):
    stream = client.chat.completions.create(model="tiny", messages=MSGS, max_completion_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct(tiny_server, max_tokens=6, ignore_eos=True)["choices"][0]["message"]["content"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_sdk_conflicting_caps_are_a_400_naming_both(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MSGS, max_completion_tokens=6, max_tokens=4)
    assert e.value.status_code == 400
    assert "max_completion_tokens" in e.value.message and "max_tokens" in e.value.message


@pytest.fixture(scope="module")
def chat_model(tiny_server):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="tiny", api_key="sk-any", base_url=base_url(tiny_server), max_tokens=6, temperature=0,
                      max_retries=0, stream_usage=True, extra_body={"ignore_eos": True})


def test_langchain_invoke(tiny_server, chat_model):
    msg = chat_model.invoke("Tell me a story.")
    assert msg.content == direct(tiny_server, max_tokens=6, ignore_eos=True)["choices"][0]["message"]["content"]
    assert msg.usage_metadata["output_tokens"] == 6
    assert msg.response_metadata["finish_reason"] == "length"


def test_langchain_stream(tiny_server, chat_model):
    chunks = list(chat_model.stream("Tell me a story."))
    assert "".join(c.content for c in chunks) == direct(tiny_server, max_tokens=6, ignore_eos=True)[
        "choices"][0]["message"]["content"]
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] == 6
