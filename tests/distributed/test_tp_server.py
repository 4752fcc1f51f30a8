"""Through the HTTP server, as `npu-serve serve` runs it: SmolLM2-135M (9 query heads over 3 KV heads)
split over 3 ranks, each holding 3 query heads and 1 KV head, answers like the single-device engine;
then one rank is killed mid-stream: the stream ends with an error event, /health answers 503 and the
server exits non-zero on its own, well within the distributed timeout. One server start for both."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import requests

from npu_serve import LLM, SamplingParams
from tests.distributed.tp_util import ServeProcess, compare
from tests.e2e.conftest import free_port

TIMEOUT_S = 20  # --distributed-timeout: the server must be gone well within it after a rank dies
PROMPTS = ["The three primary colors are", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def server(default_model_dir, tmp_path_factory):
    port = free_port()
    proc = ServeProcess(["--model", str(default_model_dir), "--device", "cpu", "--dtype", "float32",
                         "--max-model-len", "1024", "--tensor-parallel-size", "3", "--distributed-timeout",
                         str(TIMEOUT_S), "--port", str(port), "--served-model-name", "smol", "--no-moderation",
                         "--log-level", "warning"], tmp_path_factory.mktemp("tp3"), "tp3")
    proc.url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_healthy(proc.url, timeout=300)
        yield proc
    finally:
        proc.stop()


def test_tp3_serves_smollm2_like_one_device(server, default_model_dir):
    answers = []
    for prompt in PROMPTS:
        r = requests.post(server.url + "/v1/completions", timeout=120, json={
            "model": "smol", "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True, "logprobs": 2})
        assert r.status_code == 200, r.text
        answers.append(r.json()["choices"][0])
    assert len(server.spawned_ranks()) == 2  # ranks 1 and 2; rank 0 is the server process
    with LLM(str(default_model_dir), device="cpu", dtype="float32", max_model_len=1024) as one:
        want = one.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2))
    for prompt, got, ref in zip(PROMPTS, answers, want):
        ref = ref.outputs[0]
        ref_tokens = [pos[t].decoded_token for t, pos in zip(ref.token_ids, ref.logprobs)]
        ref_lps = [{lp.decoded_token: lp for lp in pos.values()} for pos in ref.logprobs]
        lp = got["logprobs"]
        compare(lp["tokens"], lp["top_logprobs"], ref_tokens, ref_lps, repr(prompt))
        if lp["tokens"] == ref_tokens:
            assert got["text"] == ref.text


def test_killing_a_rank_mid_stream_fails_the_stream_and_the_server(server):
    body = {"model": "smol", "prompt": "Write a long story about a lighthouse.", "max_tokens": 400,
            "temperature": 0, "ignore_eos": True, "stream": True}
    events = []
    with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=60) as r:
        lines = (line for line in r.iter_lines() if line)
        for line in lines:
            events.append(line.decode())
            if len(events) == 4:  # streaming for real: now a rank dies
                victim = server.spawned_ranks()[0]
                os.kill(victim, signal.SIGKILL)
                killed_at = time.monotonic()
        # the rest of the stream, until the server ends it
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][len("data: "):])["error"]
    assert error["code"] == 503 and "exited with code -9" in error["message"], error
    assert len(events) < 100  # it ended because of the kill, not at max_tokens
    health = requests.get(server.url + "/health", timeout=5)
    assert health.status_code == 503 and "tensor parallelism failed" in health.json()["message"]
    server.proc.wait(timeout=TIMEOUT_S)
    assert server.proc.returncode == 1
    assert time.monotonic() - killed_at < TIMEOUT_S
    assert "the engine stopped: tensor parallelism failed" in server.text()
