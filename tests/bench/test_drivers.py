"""The load drivers: how many requests are in flight, and when open-loop requests are sent.

`send` here is a coroutine that sleeps instead of calling a server: what is under test is the
driver's scheduling, which no server could observe as precisely. The real client is exercised
against a live server in tests/e2e/test_bench_e2e.py.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from npu_serve.bench.client import RequestRecord
from npu_serve.bench.drivers import arrival_times, closed_loop, open_loop
from npu_serve.bench.workload import Prompt


class Recorder:
    def __init__(self, delay: float):
        self.delay = delay
        self.in_flight = 0
        self.peak = 0
        self.sent_at: dict[int, float] = {}

    async def send(self, i: int, prompt: Prompt) -> RequestRecord:
        self.sent_at[i] = time.perf_counter()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(self.delay)
        self.in_flight -= 1
        return RequestRecord(index=i, prompt_tokens_sent=prompt.tokens, max_tokens=1, ok=True)


PROMPTS = [Prompt(f"p{i}", i) for i in range(10)]


class Bar:
    n = 0

    def update(self, k):
        self.n += k


def test_closed_loop_holds_concurrency_and_sends_everything_once():
    rec, bar = Recorder(0.01), Bar()
    trace = asyncio.run(closed_loop(rec.send, PROMPTS, 3, bar))
    assert [r.index for r in trace.records] == list(range(10))
    assert [r.prompt_tokens_sent for r in trace.records] == list(range(10))
    assert rec.peak == 3 and bar.n == 10
    assert trace.duration_s >= 0.04 - 1e-3  # ceil(10 / 3) = 4 rounds of 10 ms
    assert asyncio.run(closed_loop(Recorder(0).send, PROMPTS[:2], 8)).records[1].index == 1  # fewer prompts than users


def test_poisson_arrivals_are_seeded_with_the_right_mean():
    a = arrival_times(2000, 4.0, seed=7)
    assert a == arrival_times(2000, 4.0, seed=7) and a != arrival_times(2000, 4.0, seed=8)
    gaps = [y - x for x, y in zip([0.0] + a, a)]
    assert all(g >= 0 for g in gaps)
    assert abs(statistics.mean(gaps) - 0.25) < 0.02  # exponential gaps of mean 1 / rate
    assert abs(statistics.stdev(gaps) - 0.25) < 0.03  # ... and standard deviation 1 / rate
    assert arrival_times(3, float("inf"), seed=0) == [0.0, 0.0, 0.0]


def test_open_loop_sends_on_schedule_and_honours_the_cap():
    rec = Recorder(0.2)
    trace = asyncio.run(open_loop(rec.send, PROMPTS[:5], float("inf"), seed=0))
    assert rec.peak == 5 and len(trace.records) == 5  # all at once: nobody waits for anybody
    capped = Recorder(0.05)
    asyncio.run(open_loop(capped.send, PROMPTS, float("inf"), seed=0, max_concurrency=2))
    assert capped.peak == 2
    timed = Recorder(0.0)
    t0 = time.perf_counter()
    asyncio.run(open_loop(timed.send, PROMPTS[:6], 10.0, seed=3))
    for i, at in enumerate(arrival_times(6, 10.0, seed=3)):
        late = timed.sent_at[i] - t0 - at
        assert -0.001 < late < 0.25  # never early; late only by the event loop's wake-up (bounded loosely)
