"""Two of the architectures through the live HTTP server: Gemma 2 (sliding-window and full layers, a
logit softcap) and DeepSeek-V3 (MLA: key and value heads of different sizes, MoE). Greedy text,
streamed and whole, equals what transformers' generate() gives for the same prompt, with prompts
longer than the window and a token budget that chunks them, two requests at a time."""

from __future__ import annotations

import json

import pytest
import torch

from tests.e2e.conftest import LiveServer, sse_lines
from tests.engine.model_families import BY_NAME

MAX_NEW = 16
PROMPTS = [
    "Paged attention stores keys and values in fixed-size blocks so that memory is not wasted on padding, "
    "and requests that share a prefix can share blocks.",
    "The history of computing is a story of ideas made real. Charles Babbage designed the analytical engine; "
    "Ada Lovelace wrote what many call the first program.",
]


@pytest.fixture(scope="module", params=["gemma2", "deepseek_v3"])
def family_server(request, tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer, GenerationConfig

    from npu_serve import AsyncEngine
    from npu_serve.server.app import build_app
    from npu_serve.server.config import ServerConfig

    name = request.param
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = BY_NAME[name].build(len(tok))
    path = tmp_path_factory.mktemp(f"{name}-e2e")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    expected = []
    config = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = torch.tensor([tok.encode(prompt, add_special_tokens=True)])
            assert ids.shape[1] > 20  # longer than the windows
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
            expected.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))

    def factory():
        return AsyncEngine(model=str(path), device="cpu", dtype="float32", max_num_batched_tokens=16)

    server = LiveServer(build_app(factory, ServerConfig(served_model_name=name))).start()
    yield name, server, expected
    server.stop()


def test_greedy_text_equals_generate(family_server):
    """Both prompts at once (they share steps in the engine), one whole and one streamed each."""
    from concurrent.futures import ThreadPoolExecutor

    name, server, expected = family_server
    base = {"model": name, "temperature": 0, "max_tokens": MAX_NEW, "ignore_eos": True}

    def whole(prompt):
        return server.post("/v1/completions", {**base, "prompt": prompt})

    def streamed(prompt):
        return server.post("/v1/completions", {**base, "prompt": prompt, "stream": True})

    with ThreadPoolExecutor(4) as pool:
        wholes = list(pool.map(whole, PROMPTS))
        streams = list(pool.map(streamed, PROMPTS))
    for r, want in zip(wholes, expected):
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want
        assert r.json()["usage"]["completion_tokens"] == MAX_NEW
    for r, want in zip(streams, expected):
        chunks = [json.loads(p) for p in sse_lines(r.content)[:-1]]
        assert "".join(c["choices"][0]["text"] for c in chunks) == want
    assert server.wait_kv_free()[0] == 0
