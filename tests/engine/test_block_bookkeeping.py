"""Block bookkeeping under random operation sequences (hypothesis), with no model and no torch.

A fake "model" samples tokens from a small alphabet so prompts and outputs collide often and the
prefix cache is exercised; random aborts, tiny pools (preemption) and chunked budgets mix in. After
every step: ref counts are never negative, a block is free exactly when its count is 0, each live
block's count equals the number of requests holding it, and at the end every block is free again.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from npu_serve.engine.request import Request
from npu_serve.engine.scheduler import Scheduler, SchedulerConfig
from npu_serve.outputs import FinishReason
from npu_serve.sampling_params import SamplingParams


def check_invariants(s: Scheduler) -> None:
    pool = s.kv.pool
    holders = Counter()
    for rid in s.requests:
        for bid in s.kv.block_ids(rid):
            holders[bid] += 1
    free_ids = set(pool._free)
    for block in pool.blocks[1:]:
        assert block.ref_cnt >= 0
        assert (block.ref_cnt == 0) == (block.block_id in free_ids), block
        assert block.ref_cnt == holders[block.block_id], (block, holders[block.block_id])
    assert pool.null_block.ref_cnt == 1 and 0 not in free_ids
    for h, block in pool._cached.items():
        assert block.block_hash == h


request_st = st.tuples(
    st.lists(st.integers(0, 3), min_size=1, max_size=40),  # prompt over a 4-token alphabet
    st.integers(1, 12),  # max_tokens
)


@settings(max_examples=150, deadline=None)
@given(
    requests=st.lists(request_st, min_size=1, max_size=12),
    num_blocks=st.integers(8, 24),
    budget=st.integers(4, 64),
    block_size=st.sampled_from([2, 4]),
    caching=st.booleans(),
    ops=st.lists(st.tuples(st.sampled_from(["step", "step", "step", "abort", "add"]), st.integers(0, 50)), max_size=120),
)
def test_random_operations_never_leak(requests, num_blocks, budget, block_size, caching, ops):
    max_len = (num_blocks - 1) * block_size
    s = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget, max_model_len=max_len,
                                  block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=caching))
    pending = [r for r in requests if len(r[0]) <= max_len]
    counter = 0

    def add():
        nonlocal counter
        if pending:
            prompt, max_tokens = pending.pop()
            s.add_request(Request(f"r{counter}", prompt, SamplingParams(temperature=0, max_tokens=max_tokens),
                                  eos_token_ids=frozenset({3})))
            counter += 1

    def step(seed: int):
        out = s.schedule()
        assert out.num_batched_tokens <= budget
        sampled = {x.request_id: (seed + x.start) % 4 for x in out.scheduled if x.sample}
        s.update(out, sampled)

    add()
    for kind, arg in ops:
        if kind == "add":
            add()
        elif kind == "abort" and s.requests:
            rid = sorted(s.requests)[arg % len(s.requests)]
            s.finish_request(rid, FinishReason.ABORT)
        else:
            step(arg)
        check_invariants(s)
    while pending:
        add()
    for i in range(10_000):  # everything must finish: no request can be starved forever
        if not s.has_unfinished:
            break
        step(i)
        check_invariants(s)
    assert not s.has_unfinished
    assert s.kv.num_used_blocks() == 0
    assert all(b.ref_cnt == 0 for b in s.kv.pool.blocks[1:])


def test_prefix_hits_share_blocks_and_free_them():
    s = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=100, max_model_len=64, block_size=4,
                                  num_blocks=32))
    prompt = list(range(10))  # 2 full blocks + 2 tokens
    for i in range(3):
        s.add_request(Request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=2)))
    out = s.schedule()
    starts = [x.start for x in out.scheduled]
    assert starts == [0, 8, 8]  # the 2nd and 3rd hit both full blocks of the 1st
    first_two = [x.block_ids[:2] for x in out.scheduled]
    assert first_two[0] == first_two[1] == first_two[2]
    assert s.kv.pool.blocks[first_two[0][0]].ref_cnt == 3
    for rid in list(s.requests):
        s.finish_request(rid, FinishReason.ABORT)
    assert s.kv.num_used_blocks() == 0


def test_preemption_frees_newest_and_recomputes():
    s = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=100, max_model_len=20, block_size=2,
                                  num_blocks=7, enable_prefix_caching=False))
    s.add_request(Request("old", [1, 2, 3], SamplingParams(temperature=0, max_tokens=10)))
    s.add_request(Request("new", [4, 5, 6], SamplingParams(temperature=0, max_tokens=10)))
    preempted = []
    for _ in range(30):
        out = s.schedule()
        preempted += out.preempted
        s.update(out, {x.request_id: 0 for x in out.scheduled if x.sample})
        if not s.has_unfinished:
            break
    assert preempted and preempted[0] == "new"
    assert not s.has_unfinished and s.kv.num_used_blocks() == 0
