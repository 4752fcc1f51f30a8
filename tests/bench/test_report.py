"""Results files, the markdown table and the overlaid plot, from runs built by hand."""

from __future__ import annotations

import json

import pytest

from npu_serve.bench.client import USAGE, RequestRecord
from npu_serve.bench.config import BenchConfig
from npu_serve.bench.errors import BenchError
from npu_serve.bench.machine import CpuUse
from npu_serve.bench.plot import plot_results
from npu_serve.bench.report import format_run, load_results, markdown_table, results_document, write_results
from npu_serve.bench.runner import Invocation, RunResult
from npu_serve.bench.stats import summarize
from npu_serve.cli import build_parser


def _run(load, mode, tokens_per_s):
    recs = [RequestRecord(index=i, prompt_tokens_sent=10, max_tokens=4, ok=True, ttft=0.1 * load, latency=1.0,
                          chunk_times=[0.1, 0.4, 0.7, 1.0], output_tokens=4, prompt_tokens=12, token_source=USAGE)
            for i in range(4)]
    stats = summarize(recs, 16 / tokens_per_s, ignore_eos=True, slos={"ttft": 500})
    return RunResult(mode=mode, concurrency=load if mode == "closed" else None,
                     request_rate=float(load) if mode == "open" else None, max_concurrency=None, num_prompts=4,
                     salt="s:0", stats=stats, cpu=CpuUse(0.5, 1.9, 0.1, 1.5, 0.3), requests=recs)


def _doc(label, argv, runs, model="m"):
    cfg = BenchConfig.from_args(build_parser().parse_args(["bench", "--label", label, "--api-key", "sk-secret", *argv]))
    return results_document(cfg, Invocation(model, "salt", "approx", USAGE, runs))


def test_results_file_round_trip_without_the_key(tmp_path):
    doc = _doc("ours", ["--concurrency", "1,8"], [_run(1, "closed", 10.0), _run(8, "closed", 40.0)])
    path = tmp_path / "sub" / "r.json"
    write_results(path, doc)
    text = path.read_text()
    assert "sk-secret" not in text and json.loads(text)["settings"]["api_key"] == "(set)"
    (back,) = load_results([str(path)])
    assert back["label"] == "ours" and [r["concurrency"] for r in back["runs"]] == [1, 8]
    twice = tmp_path / "again.json"
    twice.write_text(text)
    assert [d["label"] for d in load_results([str(path), str(twice)])] == ["ours (r.json)", "ours (again.json)"]
    assert back["runs"][1]["stats"]["output_throughput"] == pytest.approx(40.0)
    assert len(back["runs"][0]["requests"]) == 4


def test_infinite_rate_is_strict_json(tmp_path):
    run = _run(1, "open", 10.0)
    run.request_rate = float("inf")
    write_results(tmp_path / "o.json", _doc("open", ["--request-rate", "inf", "--num-prompts", "4"], [run]))
    back = json.loads((tmp_path / "o.json").read_text())
    assert back["runs"][0]["request_rate"] == "inf" and back["settings"]["request_rate"] == ["inf"]


def test_text_summary_and_markdown_table():
    run = _run(8, "closed", 40.0)
    text = format_run(run)
    assert "c=8: 4 requests" in text and "output 40.0 tok/s" in text and "goodput (ttft<=500 ms)" in text
    assert "server 1.50, other 0.30" in text
    a = _doc("ours", ["--concurrency", "1,8"], [_run(1, "closed", 10.0), run])
    b = _doc("peer", ["--concurrency", "8"], [_run(8, "closed", 80.0)])
    table = markdown_table([a, b]).splitlines()
    assert len(table) == 2 + 3
    assert table[0].count("|") == table[1].count("|") == table[2].count("|")
    assert table[3].startswith("| ours | c=8 | 4 | 0 / 0 | 40.0 |")
    assert table[4].startswith("| peer | c=8 | 4 | 0 / 0 | 80.0 |")


def test_plot_overlays_files_and_refuses_mixed_modes(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    a = _doc("ours", ["--concurrency", "1,8"], [_run(1, "closed", 10.0), _run(8, "closed", 40.0)])
    b = _doc("peer", ["--concurrency", "1,8"], [_run(1, "closed", 20.0), _run(8, "closed", 30.0)], model="m2")
    out = plot_results([a, b], tmp_path / "p.png")
    pixels = image.imread(out)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 600
    o = _doc("open", ["--request-rate", "1", "--num-prompts", "4"], [_run(1, "open", 10.0)])
    with pytest.raises(BenchError, match="cannot overlay closed-loop"):
        plot_results([a, o], tmp_path / "q.png")
    with pytest.raises(BenchError, match="PNG"):
        plot_results([a], tmp_path / "q.jpg")
    assert plot_results([o], tmp_path / "open.png").exists()
