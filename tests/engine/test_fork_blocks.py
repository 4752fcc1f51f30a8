"""n > 1 (and best_of) block sharing: one prompt computation, forked block tables, copy-on-write.

Torch-free part: random operation sequences with n > 1 groups against a fake KV memory that applies
the scheduler's block copies and slot writes exactly as the worker would; every request must read
back its own tokens at every context position (so a missed or wrong copy-on-write fails), ref counts
stay consistent and everything is freed at the end. Model part: n = 4 on the tiny model shares the
prompt's blocks (ref counts counted while it runs), frees them all, and each seeded output equals a
single run with seed + i; best_of returns the n best of those by cumulative logprob.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npu_serve import SamplingParams
from npu_serve.engine.request import Request, RequestStatus
from npu_serve.engine.scheduler import Scheduler, SchedulerConfig
from npu_serve.outputs import FinishReason
from tests.engine.test_block_bookkeeping import check_invariants


class FakeKV:
    """Block id -> the token ids written at each slot: what attention would read."""

    def __init__(self, block_size: int, requests: dict):
        self.bs = block_size
        self.mem: dict[int, list] = {}
        self.requests = requests  # the scheduler's live requests, to check what the messages carry

    def step(self, out) -> None:
        sources = {src: list(self.mem.get(src, [None] * self.bs)) for src, _ in out.block_copies}
        for src, dst in out.block_copies:
            self.mem[dst] = list(sources[src])
        for x in out.scheduled:  # the whole batch writes (the message's tokens) before any attention reads
            for p, token in zip(range(x.start, x.start + x.num_new_tokens), x.token_ids):
                self.mem.setdefault(x.block_ids[p // self.bs], [None] * self.bs)[p % self.bs] = token
        for x in out.scheduled:
            end = x.start + x.num_new_tokens
            got = [self.mem[x.block_ids[p // self.bs]][p % self.bs] for p in range(end)]
            req = self.requests[x.request_id]
            assert got == req.token_slice(0, end), f"{x.request_id} reads wrong KV"


def run_step(s: Scheduler, kv: FakeKV, seed: int):
    out = s.schedule()
    kv.step(out)
    sampled = {}
    for x in out.scheduled:
        if x.sample:
            lead = out.sampling[x.request_id]
            for r in (lead, *lead.fork_children):
                sampled[r.request_id] = (seed + x.start + r.output_index) % 4
    s.update(out, sampled)
    return out


@settings(max_examples=120, deadline=None)
@given(
    groups=st.lists(st.tuples(st.lists(st.integers(0, 3), min_size=1, max_size=30), st.integers(1, 10),
                              st.integers(1, 4)), min_size=1, max_size=6),
    num_blocks=st.integers(10, 30),
    budget=st.integers(4, 48),
    block_size=st.sampled_from([2, 4]),
    caching=st.booleans(),
    aborts=st.lists(st.integers(0, 200), max_size=4),
)
def test_forked_groups_read_their_own_tokens_and_never_leak(groups, num_blocks, budget, block_size, caching, aborts):
    max_len = (num_blocks - 1) * block_size
    s = Scheduler(SchedulerConfig(max_num_seqs=6, max_num_batched_tokens=budget, max_model_len=max_len,
                                  block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=caching))
    kv = FakeKV(block_size, s.requests)
    for g, (prompt, max_tokens, n) in enumerate(groups):
        if len(prompt) > max_len:
            continue
        p = SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens)
        kids = [Request(f"g{g}#{i}", prompt, p, eos_token_ids=frozenset({3}), output_index=i, parent_id=f"g{g}")
                for i in range(n)]
        s.add_request(kids[0], kids[1:])
    for i in range(10_000):
        if not s.has_unfinished:
            break
        if i in aborts and s.requests:
            s.finish_request(sorted(s.requests)[i % len(s.requests)], FinishReason.ABORT)
        run_step(s, kv, i)
        check_invariants(s)
    assert not s.has_unfinished and not s.requests
    assert s.kv.num_used_blocks() == 0


def test_followers_fork_after_one_prefill_and_copy_the_partial_block():
    s = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64, block_size=4,
                                  num_blocks=32))
    p = SamplingParams(n=3, temperature=1.0, max_tokens=3)
    kids = [Request(f"r#{i}", list(range(10)), p, output_index=i, parent_id="r") for i in range(3)]
    s.add_request(kids[0], kids[1:])
    kv = FakeKV(4, s.requests)
    first = run_step(s, kv, 0)
    assert [x.request_id for x in first.scheduled] == ["r#0"] and first.num_batched_tokens == 10
    assert [c.request_id for c in first.sampling["r#0"].fork_children] == ["r#1", "r#2"]
    assert [c.output_index for c in first.sampling["r#0"].fork_children] == [1, 2]
    tables = [s.kv.block_ids(k.request_id) for k in kids]
    assert tables[0] == tables[1] == tables[2] and len(tables[0]) == 3  # 2 full blocks + 1 partial
    assert [s.kv.pool.blocks[b].ref_cnt for b in tables[0]] == [3, 3, 3]
    second = run_step(s, kv, 1)
    assert second.num_batched_tokens == 3  # three decodes, no prompt recomputed
    assert len(second.block_copies) == 2  # the first two writers copy the shared partial block
    tables = [s.kv.block_ids(k.request_id) for k in kids]
    assert tables[0][:2] == tables[1][:2] == tables[2][:2] and len({t[2] for t in tables}) == 3
    while s.has_unfinished:
        run_step(s, kv, 2)
    assert s.kv.num_used_blocks() == 0


# -- through the model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    from npu_serve import LLM

    return LLM(str(tiny_llama_dir), device="cpu", dtype="float32", max_model_len=256, max_num_batched_tokens=32)


def test_n4_shares_prompt_blocks_and_frees_them(llm):
    core = llm.engine
    prompt = list(range(200, 200 + 37))  # 2 full blocks of 16 + a partial one; prefilled in 2 chunks
    params = SamplingParams(n=4, temperature=1.0, seed=11, max_tokens=12, ignore_eos=True)
    parent = core.make_parent("fork-n4", prompt, params)
    core.add(parent)
    pool, kvm = core.scheduler.kv.pool, core.scheduler.kv
    schedule, runs = core.scheduler.schedule, []

    def spy():  # records what each step computes
        so = schedule()
        runs.extend(x.num_new_tokens for x in so.scheduled if x.start < len(prompt))
        return so

    core.scheduler.schedule = spy
    final, max_shared = None, 0
    while core.has_unfinished:
        outs = core.step()
        live = [c for c in parent.children if c.status == RequestStatus.RUNNING]
        if len(live) == 4:
            tables = [kvm.block_ids(c.request_id) for c in live]
            assert tables[0][:2] == tables[1][:2] == tables[2][:2] == tables[3][:2]
            max_shared = max(max_shared, min(pool.blocks[b].ref_cnt for b in tables[0][:2]))
        final = outs[-1] if outs else final
    del core.scheduler.schedule
    assert max_shared == 4  # the two full prompt blocks are held by all four outputs at once
    assert sum(runs) == len(prompt) and len(runs) == 2  # the prompt ran through the model once, not four times
    assert kvm.num_used_blocks() == 0 and all(b.ref_cnt == 0 for b in pool.blocks[1:])
    singles = [llm.generate([prompt], SamplingParams(temperature=1.0, seed=11 + i, max_tokens=12, ignore_eos=True))[0]
               .outputs[0].token_ids for i in range(4)]
    assert [o.token_ids for o in final.outputs] == singles
    assert len({tuple(t) for t in singles}) > 1


def test_best_of_returns_the_n_most_likely(llm):
    prompt = "Copy on write"
    single = [llm.generate([prompt], SamplingParams(temperature=1.0, seed=5 + i, max_tokens=8, ignore_eos=True,
                                                    logprobs=0))[0].outputs[0] for i in range(5)]
    out = llm.generate([prompt], SamplingParams(n=2, best_of=5, temperature=1.0, seed=5, max_tokens=8,
                                                ignore_eos=True))[0]
    ranked = sorted(single, key=lambda o: -o.cumulative_logprob)[:2]
    assert [o.token_ids for o in out.outputs] == [o.token_ids for o in ranked]
    assert [o.index for o in out.outputs] == [0, 1]
    assert out.outputs[0].cumulative_logprob == pytest.approx(ranked[0].cumulative_logprob, abs=1e-4)
    assert out.outputs[0].logprobs is None
    assert llm.engine.scheduler.kv.num_used_blocks() == 0
