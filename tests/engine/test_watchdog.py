"""StepWatchdog: the step-time histogram, the default timeout per device, and a stuck step noticed once."""

from __future__ import annotations

import threading
import time

import pytest

from npu_serve.engine.watchdog import (
    DEFAULT_ACCELERATOR_STEP_TIMEOUT_S, STEP_BUCKETS_S, StepWatchdog, resolve_step_timeout,
)


def test_resolve_step_timeout():
    assert resolve_step_timeout(None, "cpu") is None
    assert resolve_step_timeout(None, "npu") == resolve_step_timeout(None, "cuda") == DEFAULT_ACCELERATOR_STEP_TIMEOUT_S
    assert resolve_step_timeout(0, "npu") is None
    assert resolve_step_timeout(2.5, "cpu") == 2.5
    with pytest.raises(ValueError):
        resolve_step_timeout(-1, "cpu")


def test_histogram_is_cumulative_with_inf_last():
    w = StepWatchdog(None, lambda s: None)
    for seconds in (0.0005, 0.002, 0.002, 0.7, 1000.0):
        w._observe(seconds)
    buckets, total = w.histogram()
    assert [b for b, _ in buckets] == [*STEP_BUCKETS_S, float("inf")]
    counts = dict(buckets)
    assert counts[0.001] == 1 and counts[0.0025] == 3 and counts[0.5] == 3 and counts[1.0] == 4
    assert counts[60.0] == 4 and counts[float("inf")] == 5 == w.num_steps
    assert total == pytest.approx(0.0005 + 0.004 + 0.7 + 1000.0)


def test_a_step_past_the_timeout_is_reported_once_while_it_runs():
    calls = []
    reported = threading.Event()
    w = StepWatchdog(0.1, lambda age: (calls.append(age), reported.set()))
    for _ in range(3):
        with w.step():
            time.sleep(0.005)  # fast steps never trip it
    assert not calls
    with w.step():
        assert reported.wait(5), "the watchdog did not notice a step running past its timeout"
        assert w.running_for() > 0.1
        time.sleep(0.3)  # still inside the step: no second report
    assert len(calls) == 1 and calls[0] > 0.1
    assert w.num_steps == 4


def test_no_monitor_thread_without_a_timeout():
    w = StepWatchdog(None, lambda s: pytest.fail("never called"))
    assert w._thread is None
    with w.step():
        pass
    assert w.running_for() is None and w.num_steps == 1
