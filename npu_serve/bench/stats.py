"""From request records to a run's numbers. Pure: no I/O, no clock.

Definitions (the same as vLLM's benchmark_serving, so figures compare):
- duration: from the first request sent to the last one finished (the driver measures it);
- output tok/s = output tokens of successful requests / duration; req/s = successful requests / duration;
- TTFT, end-to-end latency: per successful request;
- TPOT = (latency - TTFT) / (output tokens - 1), per successful request with more than one token;
- ITL: every gap between consecutive text chunks, pooled over all successful requests;
- percentiles interpolate linearly between order statistics (numpy's default);
- goodput: successful requests that meet every SLO given, per second of duration;
- short stream: a successful request with fewer output tokens than max_tokens although ignore_eos
  was set (the server stopped early).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from npu_serve.bench.client import USAGE, RequestRecord
from npu_serve.bench.errors import BenchError

PERCENTILES = (50, 90, 99)
SLO_METRICS = ("ttft", "tpot", "e2el")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class Distribution:
    """Summary of one metric in milliseconds (or plain counts for token lengths)."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float], scale: float = 1.0) -> Distribution | None:
        if not values:
            return None
        v = [x * scale for x in values]
        return cls(n=len(v), mean=sum(v) / len(v), p50=percentile(v, 50), p90=percentile(v, 90),
                   p99=percentile(v, 99), min=min(v), max=max(v))


def parse_slos(spec: str | None) -> dict[str, float]:
    """`"ttft:500,tpot:50"` -> {"ttft": 500.0, "tpot": 50.0} (milliseconds); None or "" -> {}."""
    if not spec:
        return {}
    slos: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition(":")
        name = name.strip().lower()
        if not sep or name not in SLO_METRICS:
            raise BenchError(f"--goodput {spec!r}: each item is METRIC:MILLISECONDS with METRIC one of "
                             f"{', '.join(SLO_METRICS)} (e.g. ttft:500,tpot:50); got {part.strip()!r}")
        try:
            ms = float(value)
        except ValueError:
            raise BenchError(f"--goodput {spec!r}: {value.strip()!r} is not a number of milliseconds") from None
        if not ms > 0 or math.isinf(ms):
            raise BenchError(f"--goodput {spec!r}: the {name} limit must be a positive number of milliseconds")
        if name in slos:
            raise BenchError(f"--goodput {spec!r}: {name} is given twice")
        slos[name] = ms
    return slos


def tpot(r: RequestRecord) -> float | None:
    if r.latency is None or r.ttft is None or r.output_tokens < 2:
        return None
    return (r.latency - r.ttft) / (r.output_tokens - 1)


def meets(r: RequestRecord, slos: dict[str, float]) -> bool:
    values = {"ttft": r.ttft, "tpot": tpot(r) or 0.0, "e2el": r.latency}
    return all(values[k] is not None and values[k] * 1000 <= limit for k, limit in slos.items())


@dataclass(frozen=True)
class RunStats:
    num_requests: int
    completed: int
    errors: int
    short_streams: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    input_tokens: int  # the server's prompt tokens where it reported them, else the client's count
    output_tokens: int
    token_source: str  # "usage" | "chunks" | "mixed" | "none"
    tokens_per_chunk: float | None  # usage tokens per text chunk (> 1: the server merged tokens); None without usage
    prompt_len: Distribution | None
    output_len: Distribution | None
    ttft_ms: Distribution | None
    tpot_ms: Distribution | None
    itl_ms: Distribution | None
    e2el_ms: Distribution | None
    slos_ms: dict[str, float] = field(default_factory=dict)
    goodput: float | None = None  # requests/s meeting every SLO
    goodput_fraction: float | None = None  # of all requests sent
    error_messages: dict[str, int] = field(default_factory=dict)
    resent: int = 0  # requests sent again because the server had closed their kept-alive connection


def summarize(records: list[RequestRecord], duration_s: float, *, ignore_eos: bool,
              slos: dict[str, float] | None = None) -> RunStats:
    slos = slos or {}
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    sources = {r.token_source for r in ok}
    token_source = "none" if not ok else (sources.pop() if len(sources) == 1 else "mixed")
    prompt_lens = [r.prompt_tokens if r.prompt_tokens is not None else r.prompt_tokens_sent for r in ok]
    out_tokens = sum(r.output_tokens for r in ok)
    chunks = sum(len(r.chunk_times) for r in ok)
    dur = duration_s if duration_s > 0 else float("nan")
    good = sum(1 for r in ok if meets(r, slos)) if slos else None
    return RunStats(
        num_requests=len(records), completed=len(ok), errors=len(failed),
        short_streams=sum(1 for r in ok if ignore_eos and r.output_tokens < r.max_tokens),
        duration_s=duration_s, request_throughput=len(ok) / dur, output_throughput=out_tokens / dur,
        total_token_throughput=(out_tokens + sum(prompt_lens)) / dur,
        input_tokens=sum(prompt_lens), output_tokens=out_tokens, token_source=token_source,
        tokens_per_chunk=out_tokens / chunks if chunks and token_source == USAGE else None,
        prompt_len=Distribution.of([float(x) for x in prompt_lens]),
        output_len=Distribution.of([float(r.output_tokens) for r in ok]),
        ttft_ms=Distribution.of([r.ttft for r in ok if r.ttft is not None], 1000),
        tpot_ms=Distribution.of([t for r in ok if (t := tpot(r)) is not None], 1000),
        itl_ms=Distribution.of([g for r in ok for g in r.itl], 1000),
        e2el_ms=Distribution.of([r.latency for r in ok if r.latency is not None], 1000),
        slos_ms=dict(slos), goodput=None if good is None else good / dur,
        goodput_fraction=None if good is None or not records else good / len(records),
        error_messages=dict(Counter(r.error or "unknown error" for r in failed).most_common(10)),
        resent=sum(1 for r in records if r.retries))
