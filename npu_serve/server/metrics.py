"""GET /metrics: Prometheus exposition through prometheus_client, one CollectorRegistry per app.

Two sources (names and vLLM equivalents: docs/metrics.md):
- the engine's load, read at scrape time from `EngineClient.stats()` by a custom collector
  (running/waiting requests, KV blocks, prefix-cache queries/hits, preemptions, step time and
  errors): counters the engine keeps are exposed as they are, so nothing can drift;
- per-request facts the server sees where requests start, stream and finish (tracking.py): token
  counters, finished requests by reason, refused requests by reason, TTFT, inter-token, end-to-end
  and queue time histograms.
Every metric has the `model_name` label, as vLLM's do.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                20.0, 80.0)
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0)
_M = ["model_name"]


class ServerMetrics:
    def __init__(self, state: Any):
        self._state = state  # ServerState: model name and engine, read at observation time
        r = self.registry = CollectorRegistry()
        self.prompt_tokens = Counter("npu_serve:prompt_tokens", "Prompt tokens of finished requests.", _M,
                                     registry=r)
        self.generation_tokens = Counter("npu_serve:generation_tokens",
                                         "Generated tokens of finished requests (all choices).", _M, registry=r)
        self.request_success = Counter("npu_serve:request_success",
                                       "Finished sequences (one per choice) by finish reason.",
                                       _M + ["finished_reason"], registry=r)
        self.request_refused = Counter("npu_serve:request_refused",
                                       "API requests answered 4xx or 503 before any output, by reason.",
                                       _M + ["reason"], registry=r)
        self.ttft = Histogram("npu_serve:time_to_first_token_seconds",
                              "From the request's arrival to its first generated token.", _M, registry=r,
                              buckets=_TTFT_BUCKETS)
        self.itl = Histogram("npu_serve:inter_token_latency_seconds",
                             "Time between successive generated tokens of a request.", _M, registry=r,
                             buckets=_ITL_BUCKETS)
        self.e2e = Histogram("npu_serve:e2e_request_latency_seconds",
                             "From the request's arrival to its end.", _M, registry=r, buckets=_LATENCY_BUCKETS)
        self.queue = Histogram("npu_serve:request_queue_time_seconds",
                               "From the engine receiving a request to its first schedule.", _M, registry=r,
                               buckets=_LATENCY_BUCKETS)
        r.register(_EngineCollector(state))

    @property
    def model(self) -> str:
        state = self._state
        return state.model_name or state.config.served_model_name or ""

    def refused(self, reason: str) -> None:
        self.request_refused.labels(self.model, reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("npu-serve")
    except PackageNotFoundError:
        return "0.0.0+local"


def engine_info(state: Any) -> dict[str, Any]:
    """Static facts of the served engine (for /version and npu_serve:engine_info); {} until loaded."""
    engine = state.engine
    if engine is None:
        return {}
    facts = getattr(engine, "facts", None)
    stats = engine.stats()
    info: dict[str, Any] = {"model": state.model_name, "version": package_version(),
                            "max_model_len": engine.max_model_len,
                            "tensor_parallel_size": stats.tensor_parallel_size,
                            "kv_blocks_total": stats.kv_blocks_total}
    if facts is not None:
        info.update(device=facts.device, dtype=facts.dtype, block_size=facts.block_size,
                    attention_backend=facts.attention_backend)
    return info


class _EngineCollector(Collector):
    """The engine's numbers, read from EngineStats at each scrape."""

    def __init__(self, state: Any):
        self._state = state

    def collect(self):
        state = self._state
        engine = state.engine
        if engine is None:
            return
        s = engine.stats()
        m = [state.model_name or state.config.served_model_name or ""]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=_M)
            g.add_metric(m, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=_M)
            c.add_metric(m, value)
            return c

        yield gauge("npu_serve:num_requests_running", "Sequences being computed.", s.running)
        yield gauge("npu_serve:num_requests_waiting", "Sequences queued (new or preempted).", s.waiting)
        yield gauge("npu_serve:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0..1).", s.kv_cache_usage)
        yield gauge("npu_serve:kv_cache_blocks_used", "KV cache blocks in use.", s.kv_blocks_used)
        yield gauge("npu_serve:kv_cache_blocks_total", "Usable KV cache blocks.", s.kv_blocks_total)
        yield counter("npu_serve:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      s.prefix_query_tokens)
        yield counter("npu_serve:prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_hit_tokens)
        yield counter("npu_serve:num_preemptions", "Sequences preempted (their KV freed, to be recomputed).",
                      s.num_preemptions)
        yield counter("npu_serve:engine_step_errors", "Engine steps whose forward raised.", s.num_step_errors)
        h = HistogramMetricFamily("npu_serve:engine_step_seconds", "Duration of one engine step.", labels=_M)
        if s.step_seconds_buckets:
            h.add_metric(m, [(floatToGoString(b), c) for b, c in s.step_seconds_buckets], s.step_seconds_sum)
        yield h
        info = engine_info(state)
        g = GaugeMetricFamily("npu_serve:engine_info", "Static facts of the served engine (value 1).",
                              labels=_M + sorted(k for k in info if k != "model"))
        g.add_metric(m + [str(info[k]) for k in sorted(info) if k != "model"], 1)
        yield g
