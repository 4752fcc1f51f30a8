"""StepWatchdog: times every engine step, and notices one that runs too long.

A step that never returns (a device hang, a deadlocked collective) would leave every request
waiting forever while `/health` still said 200. With a timeout set, a monitor thread checks the
running step's age; past the timeout it calls `on_stuck` once (AsyncEngine then marks itself dead,
which turns `/health` to 503 and answers every waiting request with EngineDeadError, i.e. 503).
The stuck step itself cannot be interrupted from Python; the orchestrator restarts the process.

Step durations are also kept as a cumulative histogram (fixed bucket bounds) for
`npu_serve:engine_step_seconds`. Only the engine thread writes them; readers take a copy.

Default timeout: off on CPU (a long prefill on a loaded CPU is slow, not stuck), and
`DEFAULT_ACCELERATOR_STEP_TIMEOUT_S` on NPU/CUDA, where a step takes milliseconds to seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STEP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DEFAULT_ACCELERATOR_STEP_TIMEOUT_S = 120.0


def resolve_step_timeout(value: float | None, device: str) -> float | None:
    """Seconds, or None for off. `value` (EngineConfig.step_timeout): None for the device's default
    (off on CPU, DEFAULT_ACCELERATOR_STEP_TIMEOUT_S elsewhere), 0 for off, or positive seconds."""
    if value is None:
        return None if device == "cpu" else DEFAULT_ACCELERATOR_STEP_TIMEOUT_S
    if value == 0:
        return None
    seconds = float(value)
    if seconds < 0:
        raise ValueError(f"step_timeout must be 0 (off) or positive seconds, got {value!r}")
    return seconds


class StepWatchdog:
    def __init__(self, timeout_s: float | None, on_stuck: Callable[[float], None]):
        self.timeout_s = timeout_s
        self._on_stuck = on_stuck
        self._started: float | None = None  # monotonic start of the running step, None between steps
        self._counts = [0] * (len(STEP_BUCKETS_S) + 1)  # per bucket (not cumulative); last is +Inf
        self._sum = 0.0
        self.num_steps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if timeout_s is not None:
            self._thread = threading.Thread(target=self._watch, name="npu-serve-watchdog", daemon=True)
            self._thread.start()

    @contextmanager
    def step(self) -> Iterator[None]:
        """Wrap one engine step (on the engine thread)."""
        start = time.monotonic()
        self._started = start
        try:
            yield
        finally:
            self._started = None
            self._observe(time.monotonic() - start)

    def _observe(self, seconds: float) -> None:
        i = 0
        while i < len(STEP_BUCKETS_S) and seconds > STEP_BUCKETS_S[i]:
            i += 1
        self._counts[i] += 1
        self._sum += seconds
        self.num_steps += 1

    def histogram(self) -> tuple[tuple[tuple[float, int], ...], float]:
        """((upper bound, cumulative count), ..., (inf, total)), sum of seconds."""
        counts, total = list(self._counts), self._sum
        out, running = [], 0
        for bound, n in zip((*STEP_BUCKETS_S, float("inf")), counts):
            running += n
            out.append((bound, running))
        return tuple(out), total

    def running_for(self) -> float | None:
        started = self._started
        return None if started is None else time.monotonic() - started

    def _watch(self) -> None:
        assert self.timeout_s is not None
        poll = min(max(self.timeout_s / 10, 0.01), 1.0)
        while not self._stop.wait(poll):
            age = self.running_for()
            if age is not None and age > self.timeout_s:
                self._on_stuck(age)
                return  # once: the engine is dead from here on

    def stop(self) -> None:
        self._stop.set()
