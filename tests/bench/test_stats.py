"""The benchmark's statistics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from npu_serve.bench.client import CHUNKS, USAGE, RequestRecord
from npu_serve.bench.errors import BenchError
from npu_serve.bench.stats import Distribution, parse_slos, percentile, summarize


def test_percentile_interpolates_linearly_between_order_statistics():
    v = [4.0, 1.0, 3.0, 2.0]  # sorted: 1 2 3 4; position (n-1) * q / 100
    assert percentile(v, 0) == 1.0
    assert percentile(v, 50) == pytest.approx(2.5)  # position 1.5
    assert percentile(v, 90) == pytest.approx(3.7)  # position 2.7: 3 + 0.7 * (4 - 3)
    assert percentile(v, 99) == pytest.approx(3.97)
    assert percentile(v, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(v, 101)


def test_distribution_scales_and_summarizes():
    d = Distribution.of([0.1, 0.2, 0.3, 0.4, 1.0], 1000)
    assert (d.n, d.min, d.max) == (5, 100.0, 1000.0)
    assert d.mean == pytest.approx(400.0)
    assert d.p50 == pytest.approx(300.0)
    assert d.p90 == pytest.approx(760.0)  # position 3.6: 400 + 0.6 * 600
    assert Distribution.of([]) is None


def _rec(index, *, ttft, chunks, latency, tokens, prompt, max_tokens=3, source=USAGE):
    return RequestRecord(index=index, prompt_tokens_sent=prompt - 2, max_tokens=max_tokens, ok=True, ttft=ttft,
                         latency=latency, chunk_times=chunks, output_tokens=tokens, prompt_tokens=prompt,
                         token_source=source, finish_reason="length")


def _records():
    r1 = _rec(0, ttft=0.1, chunks=[0.1, 0.2, 0.4], latency=0.5, tokens=3, prompt=10)  # TPOT (0.5-0.1)/2 = 0.2
    r2 = _rec(1, ttft=0.3, chunks=[0.3, 0.35], latency=0.4, tokens=2, prompt=10)  # TPOT 0.1; short (2 < 3)
    r3 = RequestRecord(index=2, prompt_tokens_sent=8, max_tokens=3, error="HTTP 503: busy")
    return [r1, r2, r3]


def test_summarize_matches_hand_computed_values():
    s = summarize(_records(), 2.0, ignore_eos=True)
    assert (s.num_requests, s.completed, s.errors, s.short_streams) == (3, 2, 1, 1)
    assert s.request_throughput == pytest.approx(1.0)  # 2 requests / 2 s
    assert s.output_throughput == pytest.approx(2.5)  # 5 tokens / 2 s
    assert s.total_token_throughput == pytest.approx(12.5)  # (5 + 20) / 2
    assert (s.input_tokens, s.output_tokens, s.token_source) == (20, 5, USAGE)
    assert s.tokens_per_chunk == pytest.approx(1.0)  # 5 tokens in 5 text chunks
    assert s.ttft_ms.p50 == pytest.approx(200.0) and s.ttft_ms.max == pytest.approx(300.0)
    assert s.tpot_ms.mean == pytest.approx(150.0)
    assert s.itl_ms.n == 3  # gaps 100, 200 (r1) and 50 ms (r2), pooled
    assert s.itl_ms.p50 == pytest.approx(100.0) and s.itl_ms.mean == pytest.approx(350 / 3)
    assert s.e2el_ms.p50 == pytest.approx(450.0)
    assert s.error_messages == {"HTTP 503: busy": 1}
    assert s.goodput is None and s.goodput_fraction is None


def test_short_streams_count_only_with_ignore_eos():
    assert summarize(_records(), 2.0, ignore_eos=False).short_streams == 0


def test_goodput_counts_requests_meeting_every_slo():
    recs = _records()
    s = summarize(recs, 2.0, ignore_eos=True, slos={"ttft": 150})  # only r1 (100 ms)
    assert s.goodput == pytest.approx(0.5) and s.goodput_fraction == pytest.approx(1 / 3)
    s = summarize(recs, 2.0, ignore_eos=True, slos={"tpot": 150})  # only r2 (100 ms per token)
    assert s.goodput == pytest.approx(0.5)
    s = summarize(recs, 2.0, ignore_eos=True, slos={"ttft": 150, "tpot": 150})  # neither meets both
    assert s.goodput == 0.0
    s = summarize(recs, 2.0, ignore_eos=True, slos={"e2el": 500})  # both (500 and 400 ms); not the failed one
    assert s.goodput == pytest.approx(1.0) and s.goodput_fraction == pytest.approx(2 / 3)


def test_token_source_and_chunk_ratio():
    merged = _rec(0, ttft=0.1, chunks=[0.1, 0.5], latency=0.5, tokens=4, prompt=10)  # 4 tokens in 2 chunks
    assert summarize([merged], 1.0, ignore_eos=False).tokens_per_chunk == pytest.approx(2.0)
    counted = _rec(1, ttft=0.1, chunks=[0.1, 0.2], latency=0.3, tokens=2, prompt=10, source=CHUNKS)
    assert summarize([counted], 1.0, ignore_eos=False).token_source == CHUNKS
    assert summarize([counted], 1.0, ignore_eos=False).tokens_per_chunk is None  # unknown without usage
    assert summarize([merged, counted], 1.0, ignore_eos=False).token_source == "mixed"
    empty = summarize([RequestRecord(index=0, prompt_tokens_sent=1, max_tokens=1, error="x")], 1.0, ignore_eos=False)
    assert empty.token_source == "none" and empty.ttft_ms is None and empty.completed == 0
    assert math.isnan(summarize([], 0.0, ignore_eos=False).output_throughput)


def test_parse_slos():
    assert parse_slos(None) == {} and parse_slos("") == {}
    assert parse_slos("ttft:500, TPOT:50,e2el:2000.5") == {"ttft": 500.0, "tpot": 50.0, "e2el": 2000.5}
    for bad, words in [("ttft=500", "METRIC:MILLISECONDS"), ("itl:5", "ttft, tpot, e2el"), ("ttft:fast", "not a number"),
                       ("ttft:-1", "positive"), ("ttft:1,ttft:2", "twice"), ("ttft:inf", "positive")]:
        with pytest.raises(BenchError, match=words):
            parse_slos(bad)
