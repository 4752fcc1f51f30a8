"""One PNG that puts several results files side by side: throughput and latency against load.

Four panels: output tok/s, TTFT, ITL and end-to-end latency, each against concurrency (closed loop)
or request rate (open loop) on a log-2 axis. One colour per results file (its label); latency
panels draw p50 as a solid line and p99 as a dotted one. matplotlib is an optional dependency (the
`bench` extra); without it the plot step fails with a message naming the extra.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from npu_serve.bench.errors import BenchError

MISSING_MATPLOTLIB = ("plotting needs matplotlib, which is not installed: pip install 'npu-serve[bench]' "
                      "(or pip install matplotlib)")

PANELS = (  # title, stats key, scale
    ("output throughput (tok/s)", "output_throughput", 1.0),
    ("time to first token (ms)", "ttft_ms", 1.0),
    ("inter-token latency (ms)", "itl_ms", 1.0),
    ("end-to-end latency (s)", "e2el_ms", 1e-3),
)


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend, or a BenchError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise BenchError(MISSING_MATPLOTLIB) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _x(run: dict[str, Any], inf_at: float) -> float:
    if run["mode"] == "closed":
        return float(run["concurrency"])
    rate = run["request_rate"]
    return inf_at if rate == "inf" else float(rate)


def plot_results(docs: list[dict[str, Any]], out: str | Path, title: str | None = None) -> Path:
    if not str(out).lower().endswith(".png"):
        raise BenchError(f"-o {out}: the plot is a PNG file; name it *.png")
    modes = {d["mode"] for d in docs}
    if len(modes) != 1:
        raise BenchError("cannot overlay closed-loop (--concurrency) and open-loop (--request-rate) results in "
                         "one plot: their x axes differ; plot them separately")
    plt = require_matplotlib()
    mode = modes.pop()
    finite = [float(r["request_rate"]) for d in docs for r in d["runs"] if r.get("request_rate") not in (None, "inf")]
    inf_at = 2 * max(finite) if finite else 1.0
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for doc in docs:
        runs = sorted(doc["runs"], key=lambda r: _x(r, inf_at))
        xs = [_x(r, inf_at) for r in runs]
        color = None
        for ax, (name, key, scale) in zip(axes.flat, PANELS):
            if key == "output_throughput":
                ys = [_num(r["stats"][key]) for r in runs]
                (line,) = ax.plot(xs, ys, marker="o", color=color, label=doc["label"])
            else:
                p50 = [_num((r["stats"][key] or {}).get("p50"), scale) for r in runs]
                p99 = [_num((r["stats"][key] or {}).get("p99"), scale) for r in runs]
                (line,) = ax.plot(xs, p50, marker="o", color=color, label=f"{doc['label']} p50")
                ax.plot(xs, p99, linestyle=":", marker=".", color=line.get_color(), label=f"{doc['label']} p99")
            color = line.get_color()
    ticks = sorted({_x(r, inf_at) for d in docs for r in d["runs"]})
    for ax, (name, _, _) in zip(axes.flat, PANELS):
        ax.set_title(name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [_tick_label(t, mode, inf_at, finite) for t in ticks])
        ax.set_xlabel("concurrency" if mode == "closed" else "request rate (req/s)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    axes.flat[1].legend(fontsize=7)
    fig.suptitle(title or "npu-serve bench: " + ", ".join(dict.fromkeys(d["model"] for d in docs)))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _num(v, scale: float = 1.0) -> float:
    return math.nan if v is None else float(v) * scale


def _tick_label(t: float, mode: str, inf_at: float, finite: list[float]) -> str:
    if mode == "open" and t == inf_at and inf_at not in finite:
        return "inf"
    return f"{t:g}"
