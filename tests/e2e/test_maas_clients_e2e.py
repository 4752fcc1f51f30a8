"""The real default model behind the server: greedy equality with the offline LLM, reasoning
split end to end, and the three MaaS client examples (requests, curl -N, openai SDK) as written,
with only the URL and key substituted."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from npu_serve import SamplingParams
from tests.e2e.conftest import API_KEY, SMOL_NAME, sse_lines

SERVICE = "8b7f4a52-5c1d-4e3f-9a0b-2c6d8e1f3a47"  # a MaaS service uuid; any value routes the same


def test_greedy_completion_equals_offline_llm(smol_server, smol_llm):
    prompt = "The capital of France is"
    offline = smol_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=24))[0]
    r = smol_server.post("/v1/completions", {"model": SMOL_NAME, "prompt": prompt, "temperature": 0,
                                             "max_tokens": 24})
    choice = r.json()["choices"][0]
    assert choice["text"] == offline.outputs[0].text
    assert choice["finish_reason"] == offline.outputs[0].finish_reason
    assert r.json()["usage"]["prompt_tokens"] == len(offline.prompt_token_ids)


def test_greedy_chat_equals_offline_llm(smol_server, smol_llm):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    offline = smol_llm.chat(messages, SamplingParams(temperature=0, max_tokens=40))[0]
    r = smol_server.post("/v1/chat/completions", {"model": SMOL_NAME, "messages": messages, "temperature": 0,
                                                  "max_tokens": 40, "stream": True})
    chunks = [json.loads(p) for p in sse_lines(r.content)[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == offline.outputs[0].text and "Paris" in text


FEW_SHOT = [  # the real model imitates the tagged answers: it opens and closes a think block itself
    {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>2 plus 2 is 4</think>4"},
    {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "<think>3 plus 3 is 6</think>6"},
    {"role": "user", "content": "4+4?"},
]


def test_reasoning_split_end_to_end(smol_server, smol_llm):
    from npu_serve.server.reasoning import split_whole

    raw = smol_llm.chat(FEW_SHOT, SamplingParams(temperature=0, max_tokens=30))[0].outputs[0].text
    assert "</think>" in raw  # the premise of this test: the model really emits the tags
    expected = split_whole("qwen3", raw)
    assert all(expected)
    body = {"model": SMOL_NAME, "messages": FEW_SHOT, "temperature": 0, "max_tokens": 30}
    message = smol_server.post("/v1/chat/completions", body).json()["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == expected
    chunks = [json.loads(p) for p in sse_lines(smol_server.post("/v1/chat/completions", {**body, "stream": True}).content)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks[1:]]
    kinds = [k for d in deltas for k in ("reasoning_content", "content") if d.get(k)]
    assert kinds == sorted(kinds, key=lambda k: k == "content")  # all thinking first, then the answer
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == expected[0]
    assert "".join(d.get("content") or "" for d in deltas) == expected[1]
    assert not any("<think>" in (d.get("content") or "") + (d.get("reasoning_content") or "") for d in deltas)


def test_maas_example_requests(smol_server):
    import requests

    url = f"{smol_server.url}/v1/infers/{SERVICE}/v1/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    data = {
        "model": SMOL_NAME,
        "max_tokens": 20,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello"},
        ],
        "stream": False,
        "temperature": 1.0,
    }
    resp = requests.post(url, headers=headers, data=json.dumps(data), verify=False)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["model"] == SMOL_NAME
    assert set(body["choices"][0]["message"]) >= {"role", "content", "reasoning_content"}
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Without the key, the same call is refused.
    assert requests.post(url, headers={"Content-Type": "application/json"}, data=json.dumps(data)).status_code == 401


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_maas_example_curl_streaming(smol_server):
    data = {"model": SMOL_NAME, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "stream": True, "stream_options": {"include_usage": True}}
    proc = subprocess.run(
        ["curl", "-N", "-sS", "-X", "POST", f"{smol_server.url}/v1/infers/{SERVICE}/v1/chat/completions",
         "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {API_KEY}",
         "-d", json.dumps(data)], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    payloads = sse_lines(proc.stdout)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    n_tokens = chunks[-1]["usage"]["completion_tokens"]
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length") and n_tokens >= 1


def test_maas_example_openai_sdk(smol_server):
    from openai import OpenAI

    client = OpenAI(api_key=API_KEY, base_url=f"{smol_server.url}/v1/infers/{SERVICE}/v1")
    response = client.chat.completions.create(
        model=SMOL_NAME,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=30,
        temperature=0,
    )
    assert "Paris" in response.choices[0].message.content
    assert response.choices[0].message.reasoning_content is None  # a model that does not think
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    # The thinking model case, as the MaaS docs read it.
    thought = client.chat.completions.create(model=SMOL_NAME, messages=FEW_SHOT, max_tokens=30, temperature=0)
    assert thought.choices[0].message.reasoning_content and thought.choices[0].message.content
    # Streaming through the SDK, with usage.
    stream = client.chat.completions.create(model=SMOL_NAME, messages=FEW_SHOT[-1:], max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 10 or chunks[-2].choices[0].finish_reason == "stop"
    assert [m.id for m in client.models.list().data] == [SMOL_NAME]
