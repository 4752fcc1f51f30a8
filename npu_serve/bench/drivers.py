"""The two ways of offering load.

- Closed loop (`--concurrency C`): C virtual users, each sends its next request as soon as its last
  one ended, until every prompt has been sent. The server sees at most C requests at a time, so
  throughput is what it sustains at that concurrency.
- Open loop (`--request-rate R`): requests arrive as a Poisson process of R per second (exponential
  gaps from a seeded generator; `inf` sends them all at once), whether or not earlier ones finished,
  optionally capped at `max_concurrency` in flight (a capped request waits in the client and its
  timings start when it is sent).
Both return the records in prompt order and the wall time from the first send to the last answer.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from npu_serve.bench.client import RequestRecord
from npu_serve.bench.workload import Prompt

Send = Callable[[int, Prompt], Awaitable[RequestRecord]]


@dataclass
class Trace:
    records: list[RequestRecord]
    duration_s: float


def _tick(progress) -> None:
    if progress is not None:
        progress.update(1)


async def closed_loop(send: Send, prompts: list[Prompt], concurrency: int, progress=None) -> Trace:
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    records: list[RequestRecord | None] = [None] * len(prompts)
    todo = iter(range(len(prompts)))

    async def user() -> None:
        # One event loop thread: taking the next index from a shared iterator needs no lock.
        for i in todo:
            records[i] = await send(i, prompts[i])
            _tick(progress)

    start = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(min(concurrency, len(prompts)))))
    return Trace([r for r in records if r is not None], time.perf_counter() - start)


def arrival_times(n: int, rate: float, seed: int) -> list[float]:
    """Seconds after the start at which each of n requests is sent: a Poisson process of `rate`/s."""
    if not rate > 0:
        raise ValueError("request rate must be > 0")
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


async def open_loop(send: Send, prompts: list[Prompt], rate: float, *, seed: int,
                    max_concurrency: int | None = None, progress=None) -> Trace:
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def one(i: int) -> RequestRecord:
        if limit is None:
            rec = await send(i, prompts[i])
        else:
            async with limit:
                rec = await send(i, prompts[i])
        _tick(progress)
        return rec

    start = time.perf_counter()
    tasks = []
    for i, at in enumerate(arrival_times(len(prompts), rate, seed)):
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    records = await asyncio.gather(*tasks)
    return Trace(list(records), time.perf_counter() - start)
