"""`npu-serve bench` against a real server (the tiny model behind uvicorn on 127.0.0.1).

The token counts the bench records must be the ones the server reported: with ignore_eos every
request produces exactly max_tokens, and each prompt's usage equals its chat-templated length
computed here from the same prompts with the model's tokenizer.
"""

from __future__ import annotations

import json
import os

import pytest

from npu_serve.bench.tokens import TokenCounter
from npu_serve.bench.workload import PromptSource, make_prompts
from npu_serve.cli import main

MAX_TOKENS = 8


def test_bench_runs_record_the_servers_usage_and_write_json_and_png(tiny_server, tokenizer_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    out, png = tmp_path / "tiny.json", tmp_path / "tiny.png"
    rc = main(["bench", "--base-url", tiny_server.url, "--concurrency", "1,2", "--num-prompts", "2,3",
               "--input-tokens", "20-40", "--tokenizer", str(tokenizer_dir), "--max-tokens", str(MAX_TOKENS),
               "--ignore-eos", "--goodput", "ttft:60000,tpot:60000", "--server-pid", str(os.getpid()),
               "--save-requests", "--no-progress", "--label", "tiny", "-o", str(out), "--plot", str(png)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "---- c=1: 2 requests" in printed and "---- c=2: 3 requests" in printed and f"results: {out}" in printed

    doc = json.loads(out.read_text())
    assert (doc["format"], doc["label"], doc["model"], doc["probe_token_source"]) == ("npu-serve-bench/1", "tiny", "tiny", "usage")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    counter = TokenCounter.from_path(str(tokenizer_dir))
    for run, n in zip(doc["runs"], (2, 3)):
        s = run["stats"]
        assert (s["num_requests"], s["completed"], s["errors"], s["short_streams"], s["token_source"]) == (n, n, 0, 0, "usage")
        assert s["output_tokens"] == n * MAX_TOKENS and s["goodput_fraction"] == 1.0
        assert s["output_throughput"] == pytest.approx(n * MAX_TOKENS / s["duration_s"])
        prompts = make_prompts(PromptSource((20, 40)), n, seed=0, salt=run["salt"], counter=counter)
        for rec, prompt in zip(run["requests"], prompts):
            templated = tok.apply_chat_template([{"role": "user", "content": prompt.text}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
            assert rec["prompt_tokens"] == len(templated)  # the server's usage, as the server must count it
            assert rec["prompt_tokens_sent"] == prompt.tokens
            assert (rec["output_tokens"], rec["token_source"], rec["finish_reason"]) == (MAX_TOKENS, "usage", "length")
            assert 1 <= len(rec["chunk_times"]) <= MAX_TOKENS  # a chunk carries one token or more
            assert 0 < rec["ttft"] == rec["chunk_times"][0] <= rec["chunk_times"][-1] <= rec["latency"]
        assert s["input_tokens"] == sum(r["prompt_tokens"] for r in run["requests"])
        assert run["cpu"]["server_cores"] is not None and run["cpu"]["machine_cores"] > 0

    image = pytest.importorskip("matplotlib.image")
    assert image.imread(png).shape[:2] > (400, 600)
    table = capsys.readouterr().out if main(["bench", "table", str(out)]) == 0 else ""
    assert "| tiny | c=2 | 3 | 0 / 0 |" in table


def test_without_stream_usage_tokens_are_counted_as_chunks(tiny_server, tmp_path, capsys):
    out = tmp_path / "chunks.json"
    rc = main(["bench", "--base-url", tiny_server.url, "--endpoint", "completions", "--concurrency", "1",
               "--num-prompts", "2", "--input-tokens", "16", "--max-tokens", str(MAX_TOKENS), "--ignore-eos",
               "--no-stream-usage", "--save-requests", "--no-progress", "-o", str(out)])
    assert rc == 0
    assert "output tokens are counted as text chunks" in capsys.readouterr().out
    (run,) = json.loads(out.read_text())["runs"]
    assert run["stats"]["token_source"] == "chunks" and run["stats"]["completed"] == 2
    for rec in run["requests"]:
        assert rec["token_source"] == "chunks" and rec["prompt_tokens"] is None
        assert rec["output_tokens"] == len(rec["chunk_times"]) and 1 <= rec["output_tokens"] <= MAX_TOKENS


def test_a_request_the_server_refuses_stops_the_bench_with_its_message(tiny_server, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--base-url", tiny_server.url, "--model", "nope", "--concurrency", "1", "--no-progress",
              "-o", str(tmp_path / "x.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "the first request to" in err and "HTTP 404: The model `nope` does not exist." in err
    assert not (tmp_path / "x.json").exists()
