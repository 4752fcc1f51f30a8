"""Tensor parallelism over Gloo on CPU: TP=2 gives TP=1's tokens, float32, on the tiny random Llama and
Qwen2 (4 query heads over 2 KV heads: each rank holds 2 query heads and 1 KV head), for the exactness
workload of tests/engine in one engine configuration that chunks prefills, preempts and hits the
prefix cache. A token may differ only where both runs saw a near-tie (top-2 logit margin < 1e-4); every
agreeing token's logprob must agree within 1e-4 too, so a wrong shard cannot hide behind a dominant
token. One TP=2 engine per model (one spawned rank), shared by the module's tests; the last one hangs
that rank, which must stop the engine within the distributed timeout.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from npu_serve import LLM, SamplingParams
from npu_serve.errors import DistributedError
from tests.distributed.tp_util import compare
from tests.engine.exactness_util import make_cases, shared_prefix_cases

MODELS = ["tiny_llama_dir", "tiny_qwen2_dir"]
# A 64-token budget chunks every longer prompt; 42 blocks of 16 cannot hold the batch (preemption).
ENGINE = dict(device="cpu", dtype="float32", max_num_batched_tokens=64, num_kv_blocks=42, max_model_len=640)
TIMEOUT_S = 10  # distributed_timeout of the TP=2 engines


def workload(llm: LLM, cases, prefix_cases):
    """The cases all at once, then the shared-prefix ones (the first warms the cache for the rest)."""
    def run(cs):
        params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=e, logprobs=2) for _, m, e in cs]
        return [o.outputs[0] for o in llm.generate([c[0] for c in cs], params)]

    return run(cases) + run(prefix_cases[:1]) + run(prefix_cases[1:])


@pytest.fixture(scope="module", params=MODELS)
def runs(request):
    from transformers import AutoTokenizer

    model_dir = str(request.getfixturevalue(request.param))
    tok = AutoTokenizer.from_pretrained(model_dir)
    cases, prefix_cases = make_cases(tok), shared_prefix_cases(tok)
    one = LLM(model_dir, **ENGINE)
    want = workload(one, cases, prefix_cases)
    two = LLM(model_dir, tensor_parallel_size=2, distributed_timeout=TIMEOUT_S, **ENGINE)
    try:
        got = workload(two, cases, prefix_cases)
        yield {"one": one, "two": two, "want": want, "got": got, "cases": cases + prefix_cases, "model": request.param}
    finally:
        two.shutdown()


def test_tp2_equals_tp1_token_for_token(runs):
    near_ties = 0
    for i, (g, w) in enumerate(zip(runs["got"], runs["want"])):
        near_ties += compare(g.token_ids, g.logprobs, w.token_ids, w.logprobs, f"case {i}")
    assert near_ties <= 2, f"{near_ties} near-ties: suspiciously many for float32"


def test_the_workload_chunked_preempted_and_hit_the_prefix_cache(runs):
    one, two = runs["one"].stats(), runs["two"].stats()
    assert two.tensor_parallel_size == 2 and runs["two"].facts.tensor_parallel_size == 2
    assert one.num_preemptions > 0 and two.num_preemptions > 0
    assert one.prefix_hit_tokens >= 7 * 16 and two.prefix_hit_tokens >= 7 * 16
    assert two.kv_blocks_used == 0 and two.kv_blocks_total == one.kv_blocks_total
    assert two.num_steps > len(runs["cases"])  # many steps, each one broadcast to rank 1


def test_seeded_sampling_is_the_same_at_tp1_and_tp2(runs):
    prompts = ["Seeded sampling must not depend on", [11, 12, 13, 14, 15]]
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True),
              SamplingParams(n=2, temperature=0.8, seed=7, max_tokens=12, ignore_eos=True)]
    want = runs["one"].generate(prompts, params)
    got = runs["two"].generate(prompts, params)
    for w, g in zip(want, got):
        assert [o.token_ids for o in g.outputs] == [o.token_ids for o in w.outputs]
    assert len({tuple(o.token_ids) for o in got[1].outputs}) == 2  # the two seeded children differ


def test_an_abort_frees_every_block_and_the_ranks_stay_in_step(runs):
    two = runs["two"]
    core = two.engine
    core.add(core.make_parent("long", list(range(100, 300)), SamplingParams(temperature=0, max_tokens=300,
                                                                              ignore_eos=True)))
    for _ in range(6):  # 200 prompt tokens in 64-token chunks, then decodes
        core.step()
    assert core.scheduler.kv.num_used_blocks() > 0
    core.abort("long")
    assert core.scheduler.kv.num_used_blocks() == 0 and not core.has_unfinished
    # Rank 1 holds no per-request state: the next request runs as if the aborted one never existed.
    case = runs["cases"][5]
    again = two.generate([case[0]], SamplingParams(temperature=0, max_tokens=case[1], ignore_eos=case[2],
                                                   logprobs=2))[0].outputs[0]
    want = runs["want"][5]
    compare(again.token_ids, again.logprobs, want.token_ids, want.logprobs, "after the abort")


def test_a_hung_rank_times_out_and_stops_the_engine(runs):
    if runs["model"] != MODELS[0]:
        pytest.skip("one timeout is enough")
    two = runs["two"]
    rank1 = two.engine.executor.workers[0]
    os.kill(rank1.pid, signal.SIGSTOP)  # alive but silent: only the timeout can tell
    try:
        t0 = time.monotonic()
        with pytest.raises(DistributedError, match="tensor parallelism failed"):
            two.generate(["a rank hangs"], SamplingParams(temperature=0, max_tokens=8))
        assert time.monotonic() - t0 < TIMEOUT_S + 10
        with pytest.raises(DistributedError):  # it stays stopped: no step can run on fewer ranks
            two.generate(["again"], SamplingParams(temperature=0, max_tokens=2))
    finally:
        if rank1.is_alive():
            os.kill(rank1.pid, signal.SIGCONT)
    rank1.join(10)
    assert not rank1.is_alive()  # the executor put the rank down
