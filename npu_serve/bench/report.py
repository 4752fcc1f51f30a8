"""Results files and their human-readable forms: per-run text summaries and a markdown table.

A results file is one JSON object (`"format": "npu-serve-bench/1"`): the label, server, model and
settings of one invocation (never the API key), and one entry per run with its statistics (times in
ms), CPU use and, with --save-requests, every request's record. Non-finite numbers are written as
null (a rate of `inf` as the string "inf"), so the file is strict JSON.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from npu_serve.bench.errors import BenchError

if TYPE_CHECKING:
    from npu_serve.bench.config import BenchConfig
    from npu_serve.bench.runner import Invocation, RunResult

FORMAT = "npu-serve-bench/1"


def default_label(model: str, base_url: str) -> str:
    return f"{model}@{urlsplit(base_url).netloc}"


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x == math.inf else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def results_document(cfg: BenchConfig, inv: Invocation) -> dict[str, Any]:
    settings = asdict(cfg)
    settings["api_key"] = "(set)" if cfg.api_key else None  # never write a secret to a results file
    runs = []
    for r in inv.runs:
        d = asdict(r)
        if r.requests is None:
            d.pop("requests")
        runs.append(d)
    return _clean({
        "format": FORMAT, "label": cfg.label or default_label(inv.model, cfg.base_url),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "base_url": cfg.base_url, "model": inv.model, "endpoint": cfg.endpoint, "mode": cfg.mode,
        "salt": inv.salt, "prompt_token_counter": inv.token_counter, "probe_token_source": inv.probe_token_source,
        "settings": settings, "runs": runs})


def write_results(path: str | Path, doc: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def load_results(paths: list[str]) -> list[dict[str, Any]]:
    """Read results files, refusing anything that is not one (clearly, naming the file)."""
    docs = []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise BenchError(f"{path}: cannot read it ({e.strerror or e})") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BenchError(f"{path}: not a JSON file ({e})") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise BenchError(f"{path}: not an npu-serve bench results file (no \"format\": \"{FORMAT}\")")
        docs.append(doc)
    labels = [d.get("label") for d in docs]
    for doc, path in zip(docs, paths):  # same label twice (e.g. two rounds): tell them apart by file
        if labels.count(doc.get("label")) > 1:
            doc["label"] = f"{doc.get('label')} ({Path(path).name})"
    return docs


def _load_name(run: dict[str, Any]) -> str:
    if run["mode"] == "closed":
        return f"c={run['concurrency']}"
    cap = f", max {run['max_concurrency']}" if run.get("max_concurrency") else ""
    rate = run["request_rate"]
    return f"rate={rate if rate == 'inf' else f'{rate:g}'}/s{cap}"


def _f(x, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _dist(d: dict | None, key: str, fmt: str = ".1f") -> str:
    return "-" if not d else _f(d.get(key), fmt)


def format_run(result: RunResult) -> str:
    d = _clean(asdict(result))
    s = d["stats"]
    lines = [f"---- {_load_name(d)}: {s['num_requests']} requests, {_f(s['duration_s'], '.2f')} s ----",
             f"completed {s['completed']}, errors {s['errors']}, short streams {s['short_streams']}; "
             f"output tokens from: {s['token_source']}"
             + (f" ({s['tokens_per_chunk']:.2f} tokens per chunk)" if s.get("tokens_per_chunk") else ""),
             f"output {_f(s['output_throughput'])} tok/s, {_f(s['request_throughput'], '.3f')} req/s, "
             f"total {_f(s['total_token_throughput'])} tok/s; prompt tokens p50 {_dist(s['prompt_len'], 'p50', '.0f')}",
             f"{'':10}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}"]
    for name, key in (("TTFT ms", "ttft_ms"), ("TPOT ms", "tpot_ms"), ("ITL ms", "itl_ms"), ("E2E ms", "e2el_ms")):
        lines.append(f"{name:10}" + "".join(f"{_dist(s[key], q):>10}" for q in ("mean", "p50", "p90", "p99")))
    if s["slos_ms"]:
        slo = ", ".join(f"{k}<={v:g} ms" for k, v in s["slos_ms"].items())
        lines.append(f"goodput ({slo}): {_f(s['goodput'], '.3f')} req/s, "
                     f"{_f(100 * s['goodput_fraction'] if s['goodput_fraction'] is not None else None, '.0f')}% of requests")
    if s.get("resent"):
        n = s["resent"]
        lines.append(f"{n} request{'s were' if n > 1 else ' was'} sent again: the server had closed "
                     f"{'their' if n > 1 else 'its'} kept-alive connection")
    for msg, count in s["error_messages"].items():
        lines.append(f"error x{count}: {msg}")
    c = d["cpu"]
    lines.append(f"cores busy: machine {_f(c['machine_cores'], '.2f')}, client {_f(c['client_cores'], '.2f')}, "
                 f"server {_f(c['server_cores'], '.2f')}, other {_f(c['other_cores'], '.2f')}; "
                 f"load avg before {_f(c['load_avg_1m_before'], '.2f')}"
                 + (f"; stalled on memory {100 * c['memory_stall_fraction']:.0f}% of the time"
                    if (c.get("memory_stall_fraction") or 0) >= 0.01 else ""))
    return "\n".join(lines)


TABLE_HEADER = ("| server | load | requests | errors / short | out tok/s | req/s | TTFT p50 ms | TTFT p99 ms "
                "| ITL p50 ms | TPOT p50 ms | E2E p50 ms | tokens from | other cores |")


def markdown_table(docs: list[dict[str, Any]]) -> str:
    """One row per run of every file, in the order given."""
    rows = [TABLE_HEADER, "|" + "---|" * (TABLE_HEADER.count("|") - 1)]
    for doc in docs:
        for run in doc["runs"]:
            s, c = run["stats"], run["cpu"]
            rows.append(f"| {doc['label']} | {_load_name(run)} | {s['num_requests']} "
                        f"| {s['errors']} / {s['short_streams']} "
                        f"| {_f(s['output_throughput'])} | {_f(s['request_throughput'], '.2f')} "
                        f"| {_dist(s['ttft_ms'], 'p50', '.0f')} | {_dist(s['ttft_ms'], 'p99', '.0f')} "
                        f"| {_dist(s['itl_ms'], 'p50')} | {_dist(s['tpot_ms'], 'p50')} "
                        f"| {_dist(s['e2el_ms'], 'p50', '.0f')} | {s['token_source']} | {_f(c.get('other_cores'), '.2f')} |")
    return "\n".join(rows)
