"""AsyncEngine.stats(): the queue as admission sees it (the inbox included), the KV blocks, the
prefix-cache and step counters; and EngineStats' new fields keep their defaults for other engines."""

from __future__ import annotations

import asyncio
import threading

from npu_serve.engine.client import EngineStats
from npu_serve.sampling_params import SamplingParams
from tests.executor_wrapper import ExecutorWrapper


class Gate(ExecutorWrapper):
    """The engine's executor, held at the first forward until released."""

    def __init__(self, real):
        super().__init__(real)
        self.entered = threading.Event()
        self.release = threading.Event()

    def execute(self, so):
        if so.scheduled:
            self.entered.set()
            self.release.wait(30)
        return self.real.execute(so)


def test_waiting_counts_queue_and_inbox_and_tokens(tiny_llama_dir):
    from npu_serve import AsyncEngine

    engine = AsyncEngine(model=str(tiny_llama_dir), device="cpu", dtype="float32", max_num_seqs=1,
                         num_kv_blocks=64, block_size=16)
    gate = Gate(engine.core.executor)
    engine.core.executor = gate
    prompts = [list(range(100, 130)), list(range(200, 220)), list(range(300, 310))]
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)

    async def run():
        idle = engine.stats()
        assert (idle.running, idle.waiting, idle.waiting_tokens, idle.kv_blocks_used) == (0, 0, 0, 0)
        assert idle.kv_blocks_total == 63 and idle.kv_cache_usage == 0.0

        async def one(i):
            return [out async for out in engine.generate(prompts[i], params, f"r{i}")][-1]

        tasks = [asyncio.create_task(one(i)) for i in range(3)]
        await asyncio.sleep(0)  # every generate() has put its request in the inbox
        queued = engine.stats()
        assert queued.waiting + queued.running == 3
        assert await asyncio.to_thread(gate.entered.wait, 30)
        held = engine.stats()  # the first request runs (max_num_seqs=1), the others wait
        assert (held.running, held.waiting) == (1, 2)
        assert held.waiting_tokens == 20 + 10 and held.kv_blocks_used == 2  # 30 tokens in blocks of 16
        gate.release.set()
        outs = await asyncio.gather(*tasks)
        assert all(o.finished for o in outs)
        done = engine.stats()
        assert (done.running, done.waiting, done.waiting_tokens, done.kv_blocks_used) == (0, 0, 0, 0)
        assert done.prefix_query_tokens == 30 + 20 + 10 and done.prefix_hit_tokens == 0
        assert done.num_steps >= 3 and done.num_step_errors == 0
        (bound, count) = done.step_seconds_buckets[-1]
        assert bound == float("inf") and count == done.num_steps and done.step_seconds_sum > 0
        await engine.shutdown()

    asyncio.run(run())


def test_new_fields_are_optional():
    s = EngineStats(running=1, waiting=2, kv_blocks_used=3, kv_blocks_total=4, num_preemptions=5,
                    prefix_hit_tokens=6, num_steps=7)
    assert (s.waiting_tokens, s.prefix_query_tokens, s.num_step_errors, s.step_seconds_buckets,
            s.step_seconds_sum, s.tensor_parallel_size) == (0, 0, 0, (), 0.0, 1)
    assert s.kv_cache_usage == 0.75
