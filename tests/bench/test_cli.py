"""`npu-serve bench` arguments: defaults, and a clear error (exit 2, no traceback) for each bad one."""

from __future__ import annotations

import sys

import pytest

from npu_serve.bench.config import BenchConfig, normalize_base_url
from npu_serve.bench.errors import BenchError
from npu_serve.cli import build_parser, main


def cfg(*argv: str) -> BenchConfig:
    return BenchConfig.from_args(build_parser().parse_args(["bench", *argv]))


def test_defaults_are_the_speed_issue_load_pattern(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    c = cfg()
    assert (c.mode, c.concurrency, c.num_prompts) == ("closed", (1, 8, 32), (16, 16, 64))
    assert (c.max_tokens, c.temperature, c.endpoint, c.stream_usage, c.api_key) == (128, 0.0, "chat", True, None)
    assert c.base_url == "http://127.0.0.1:8000/v1"


def test_lists_rates_and_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    c = cfg("--concurrency", "2, 4", "--num-prompts", "5", "--input-tokens", "180-250", "--goodput", "ttft:500")
    assert (c.concurrency, c.num_prompts, c.input_tokens, c.slos, c.api_key) == ((2, 4), (5, 5), (180, 250), {"ttft": 500.0}, "sk-env")
    o = cfg("--request-rate", "0.5,inf", "--num-prompts", "10,20", "--max-concurrency", "4", "--api-key", "k")
    assert (o.mode, o.request_rate, o.num_prompts, o.max_concurrency, o.api_key) == ("open", (0.5, float("inf")), (10, 20), 4, "k")


def test_base_url_normalization():
    assert normalize_base_url("http://h:1") == "http://h:1/v1"
    assert normalize_base_url("http://h:1/") == "http://h:1/v1"
    assert normalize_base_url("https://h/v1/infers/abc/v1/") == "https://h/v1/infers/abc/v1"
    with pytest.raises(BenchError, match="http"):
        normalize_base_url("localhost:8000")


BAD = [
    (["--concurrency", "1", "--request-rate", "2", "--num-prompts", "3"], "not both"),
    (["--concurrency", "1,x"], "'x' is not a whole number"),
    (["--concurrency", "0"], "--concurrency must be >= 1"),
    (["--concurrency", "1,,8"], "comma-separated"),
    (["--concurrency", "1,8", "--num-prompts", "1,2,3"], "one per run \\(2 runs\\)"),
    (["--request-rate", "2"], "--request-rate needs --num-prompts"),
    (["--request-rate", "-1", "--num-prompts", "3"], "rates must be > 0"),
    (["--request-rate", "fast", "--num-prompts", "3"], "not a number of requests per second"),
    (["--max-concurrency", "4"], "--max-concurrency caps an open-loop run"),
    (["--input-tokens", "300-200"], "MIN <= MAX"),
    (["--input-tokens", "lots"], "N or MIN-MAX"),
    (["--dataset", "x.jsonl", "--input-tokens", "100"], "drop one"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["--temperature", "-0.5"], "--temperature must be >= 0"),
    (["--goodput", "ttft"], "METRIC:MILLISECONDS"),
    (["--extra-body", "[1]"], "JSON object"),
    (["--extra-body", "{\"stream\": false}"], "cannot set stream"),
    (["--extra-body", "{nope"], "not valid JSON"),
    (["--plot", "out.svg"], "PNG"),
    (["--base-url", "ftp://x"], "http\\(s\\) URL"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_are_refused_with_a_clear_message(argv, message):
    with pytest.raises(BenchError, match=message):
        cfg(*argv)


def test_the_command_line_prints_the_message_and_exits_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--concurrency", "1", "--num-prompts", "1,2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "npu-serve bench: error: --num-prompts" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:  # unreachable server: said so before any run starts
        main(["bench", "--base-url", "http://127.0.0.1:9/v1", "--concurrency", "1", "--no-progress", "-o", str(tmp_path / "r.json")])
    assert e.value.code == 2
    assert "cannot reach http://127.0.0.1:9/v1/models" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_plot_and_table_refuse_run_options_and_non_results(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--concurrency", "4", "table", "a.json"])
    assert e.value.code == 2 and "(--concurrency) do nothing for `bench table`" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text('{"runs": []}')
    with pytest.raises(SystemExit):
        main(["bench", "plot", str(other), "-o", str(tmp_path / "x.png")])
    assert "not an npu-serve bench results file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "table", str(tmp_path / "missing.json")])
    assert "missing.json: cannot read it" in capsys.readouterr().err


def test_plotting_without_matplotlib_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(SystemExit) as e:  # refused before any request is sent
        main(["bench", "--base-url", "http://127.0.0.1:9/v1", "--plot", "x.png"])
    assert e.value.code == 2
    assert "pip install 'npu-serve[bench]'" in capsys.readouterr().err
