"""Admission: the engine's queue plus the requests in transit, against both limits."""

from __future__ import annotations

from npu_serve.engine.client import EngineStats
from npu_serve.server.admission import QUEUE_FULL, TOKEN_BUDGET, AdmissionController


def stats(waiting=0, waiting_tokens=0) -> EngineStats:
    return EngineStats(running=0, waiting=waiting, kv_blocks_used=0, kv_blocks_total=10, num_preemptions=0,
                       prefix_hit_tokens=0, num_steps=0, waiting_tokens=waiting_tokens)


def test_request_limit_counts_queue_and_transit():
    a = AdmissionController(max_waiting_requests=3, max_waiting_tokens=None)
    assert a.refusal(stats(waiting=2)) is None
    assert a.refusal(stats(waiting=3)) == QUEUE_FULL
    t1, t2 = a.admit(), a.admit()
    assert a.in_transit == 2
    assert a.refusal(stats(waiting=0)) is None and a.refusal(stats(waiting=1)) == QUEUE_FULL
    t1.submitted()
    t1.submitted()  # idempotent
    assert a.in_transit == 1 and a.refusal(stats(waiting=1)) is None
    t2.submitted()
    assert a.in_transit == 0


def test_token_budget():
    a = AdmissionController(max_waiting_requests=None, max_waiting_tokens=100)
    assert a.refusal(stats(waiting=50, waiting_tokens=99)) is None
    assert a.refusal(stats(waiting=50, waiting_tokens=100)) == TOKEN_BUDGET
    assert "tokens" in a.message(TOKEN_BUDGET) and "requests" in a.message(QUEUE_FULL)


def test_no_limits_and_no_engine_yet():
    assert AdmissionController(None, None).refusal(stats(waiting=10**6, waiting_tokens=10**9)) is None
    a = AdmissionController(0, None)  # zero: nothing may wait
    assert a.refusal(None) == QUEUE_FULL
    assert AdmissionController(1, None).refusal(None) is None
