"""Two "nodes" on 127.0.0.1: two separately started `npu-serve serve` processes with --nnodes 2 meet at
the rendezvous (--master-addr/--master-port) and serve a request together; node 1 runs rank 1 and no
HTTP. Stopping node 0 (SIGTERM, as an orchestrator does) tells node 1 to exit: node 0 ends by the signal
after its graceful shutdown (uvicorn re-raises it), node 1 exits 0."""

from __future__ import annotations

import requests

from npu_serve import LLM, SamplingParams
from tests.distributed.tp_util import ServeProcess, compare
from tests.e2e.conftest import free_port


def test_two_nodes_serve_one_request_and_stop_together(tiny_llama_dir, tmp_path):
    http, master = free_port(), free_port()
    common = ["--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32", "--threads", "1",
              "--tensor-parallel-size", "2", "--nnodes", "2", "--master-addr", "127.0.0.1",
              "--master-port", str(master), "--distributed-timeout", "60", "--log-level", "info"]
    node0 = ServeProcess([*common, "--node-rank", "0", "--port", str(http), "--served-model-name", "tiny",
                          "--no-moderation"], tmp_path, "node0")
    node1 = ServeProcess([*common, "--node-rank", "1"], tmp_path, "node1")
    url = f"http://127.0.0.1:{http}"
    try:
        node0.wait_healthy(url, timeout=240)
        assert node0.spawned_ranks() == [] and node1.spawned_ranks() == []  # one rank per node
        prompt = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43]
        r = requests.post(url + "/v1/completions", timeout=60, json={
            "model": "tiny", "prompt": prompt, "max_tokens": 10, "temperature": 0, "ignore_eos": True,
            "logprobs": 2})
        assert r.status_code == 200, r.text
        got = r.json()["choices"][0]
        assert "node 1 of 2: ranks 1..1 of 2" in node1.text()
    finally:
        rc0 = node0.stop()
        node1.proc.wait(timeout=60)
        rc1 = node1.stop()
    assert rc0 in (0, -15) and rc1 == 0, node0.text()[-3000:] + node1.text()[-3000:]
    assert "Application shutdown complete" in node0.text()
    with LLM(str(tiny_llama_dir), device="cpu", dtype="float32") as one:
        ref = one.generate([prompt], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True,
                                                    logprobs=2))[0].outputs[0]
    ref_tokens = [pos[t].decoded_token for t, pos in zip(ref.token_ids, ref.logprobs)]
    ref_lps = [{lp.decoded_token: lp for lp in pos.values()} for pos in ref.logprobs]
    compare(got["logprobs"]["tokens"], got["logprobs"]["top_logprobs"], ref_tokens, ref_lps, "two nodes")
