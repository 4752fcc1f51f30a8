"""/metrics against what a scripted workload must produce, on a real server with a tiny KV pool.

Token counters equal the sums of the answers' usage; finished counts by reason; prefix-cache queries
and hits exactly as two prompts sharing 64 tokens must give; preemptions when four requests do not
fit the pool (and their answers still equal the ones computed alone); histograms counted once per
request; every block free at the end.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from tests.e2e.conftest import LiveServer, sse_lines
from tests.e2e.ops_util import metric, scrape
from tests.executor_wrapper import ExecutorWrapper

BLOCK = 16
NUM_BLOCKS = 24  # 23 usable: 368 tokens


@pytest.fixture(scope="module")
def pool_server(tiny_llama_dir):
    from npu_serve import AsyncEngine
    from npu_serve.server.app import build_app
    from npu_serve.server.config import ServerConfig

    def factory():
        return AsyncEngine(model=str(tiny_llama_dir), device="cpu", dtype="float32", max_model_len=256,
                           num_kv_blocks=NUM_BLOCKS, block_size=BLOCK, max_num_batched_tokens=64)

    server = LiveServer(build_app(factory, ServerConfig(served_model_name="tiny"))).start()
    yield server
    server.stop()


def completion(server, **kw):
    body = {"model": "tiny", "temperature": 0, "ignore_eos": True, **kw}
    r = server.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    return r.json()


def delta(before, after, name, **labels):
    return metric(after, name, **labels) - metric(before, name, **labels)


def test_token_counters_and_finish_reasons_follow_the_answers(pool_server):
    before = scrape(pool_server)
    usages, reasons = [], []
    for i in range(3):  # whole answers, finished by length
        out = completion(pool_server, prompt=f"Count to {i}:", max_tokens=5)
        usages.append(out["usage"])
        reasons.append(out["choices"][0]["finish_reason"])
    ref = completion(pool_server, prompt="A stop string:", max_tokens=6)
    usages.append(ref["usage"])
    reasons.append("length")
    text = ref["choices"][0]["text"]
    stop = text[len(text) // 2:len(text) // 2 + 2]  # the same greedy text, so it must stop there
    out = completion(pool_server, prompt="A stop string:", max_tokens=6, stop=[stop])
    assert out["choices"][0]["finish_reason"] == "stop"
    usages.append(out["usage"])
    reasons.append("stop")
    for _ in range(2):  # streams with usage
        r = pool_server.post("/v1/chat/completions", {
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
        events = [json.loads(p) for p in sse_lines(r.content)[:-1]]
        usages.append(events[-1]["usage"])
        reasons.append(events[-2]["choices"][0]["finish_reason"])
    n = len(usages)
    after = scrape(pool_server)
    assert delta(before, after, "npu_serve:prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert delta(before, after, "npu_serve:generation_tokens_total") == sum(u["completion_tokens"] for u in usages)
    assert delta(before, after, "npu_serve:request_success_total", finished_reason="length") == reasons.count("length") == 6
    assert delta(before, after, "npu_serve:request_success_total", finished_reason="stop") == 1
    for hist in ("e2e_request_latency_seconds", "time_to_first_token_seconds", "request_queue_time_seconds"):
        assert delta(before, after, f"npu_serve:{hist}_count") == n, hist
    tokens_after_first = sum(u["completion_tokens"] - 1 for u in usages)
    assert 0 < delta(before, after, "npu_serve:inter_token_latency_seconds_count") <= tokens_after_first
    assert metric(after, "npu_serve:engine_step_seconds_count") > 0
    assert metric(after, "npu_serve:kv_cache_blocks_total") == NUM_BLOCKS - 1


def test_refusals_and_aborts_are_counted(pool_server):
    before = scrape(pool_server)
    assert pool_server.post("/v1/completions", {"model": "nope", "prompt": "hi"}).status_code == 404
    assert pool_server.post("/v1/completions", {"model": "tiny", "prompt": "hi", "top_p": 7}).status_code == 400
    # A stream the client drops after its first events ends as "abort".
    raw = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 200, "ignore_eos": True, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", pool_server.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
    got = b""
    while got.count(b"data: ") < 2:
        got += sock.recv(65536)
    sock.close()
    deadline = time.monotonic() + 10
    while delta(before, scrape(pool_server), "npu_serve:request_success_total", finished_reason="abort") < 1:
        assert time.monotonic() < deadline, "the dropped stream was not counted as aborted"
        time.sleep(0.05)
    after = scrape(pool_server)
    assert delta(before, after, "npu_serve:request_refused_total", reason="not_found") == 1
    assert delta(before, after, "npu_serve:request_refused_total", reason="invalid_request") == 1
    assert delta(before, after, "npu_serve:request_success_total", finished_reason="abort") == 1
    assert pool_server.wait_kv_free()[0] == 0


def test_prefix_cache_queries_and_hits_on_a_shared_prefix(pool_server):
    shared = list(range(1000, 1064))  # 64 tokens = 4 blocks no other test's prompt starts with
    before = scrape(pool_server)
    completion(pool_server, prompt=shared + [7], max_tokens=1)
    completion(pool_server, prompt=shared + [8], max_tokens=1)
    after = scrape(pool_server)
    # Each 65-token prompt is looked up once; the second finds the 4 shared blocks (its last token
    # is always computed).
    assert delta(before, after, "npu_serve:prefix_cache_queries_total") == 2 * 65
    assert delta(before, after, "npu_serve:prefix_cache_hits_total") == 64


class GatedExecutor(ExecutorWrapper):
    """The real executor, whose first step waits (up to 60 s) until `ready()` holds."""

    def __init__(self, real, ready):
        super().__init__(real)
        self.ready, self.opened = ready, False

    def execute(self, so):
        deadline = time.monotonic() + 60
        while not self.opened and not self.ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.opened = True
        return self.real.execute(so)


def test_preemptions_with_a_tiny_pool_and_answers_unchanged(pool_server):
    prompts = [[2000 + 100 * i + j for j in range(40)] for i in range(4)]  # 4 x (40 + 50) tokens > 368
    alone = [completion(pool_server, prompt=p, max_tokens=50)["choices"][0]["text"] for p in prompts]
    before = scrape(pool_server)
    results = [None] * 4

    def run(i):
        results[i] = completion(pool_server, prompt=prompts[i], max_tokens=50)["choices"][0]["text"]

    # The four must be in the engine together, however slowly the client threads start on a loaded
    # machine (a tiny model's request can finish before the next one arrives): the first step
    # waits until the engine counts all four.
    engine = pool_server.engine
    real = engine.core.executor
    def all_four_in():
        stats = engine.stats()
        return stats.waiting + stats.running >= 4

    engine.core.executor = GatedExecutor(real, all_four_in)
    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        engine.core.executor = real
    after = scrape(pool_server)
    assert delta(before, after, "npu_serve:num_preemptions_total") > 0
    assert results == alone
    assert pool_server.wait_kv_free()[0] == 0
    final = scrape(pool_server)
    assert metric(final, "npu_serve:kv_cache_blocks_used") == 0 and metric(final, "npu_serve:kv_cache_usage_perc") == 0
    assert metric(final, "npu_serve:num_requests_running") == 0 and metric(final, "npu_serve:num_requests_waiting") == 0


def test_engine_info_and_version(pool_server):
    v = requests.get(pool_server.url + "/version", timeout=10).json()
    assert v["model"] == "tiny" and v["device"] == "cpu" and v["dtype"] == "float32" and v["block_size"] == BLOCK
    assert v["max_model_len"] == 256 and v["kv_blocks_total"] == NUM_BLOCKS - 1 and v["tensor_parallel_size"] == 1
    info = [k for k in scrape(pool_server) if k[0] == "npu_serve:engine_info"]
    assert len(info) == 1 and ("device", "cpu") in info[0][1] and ("model_name", "tiny") in info[0][1]
