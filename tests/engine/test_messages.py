"""The step's messages are plain data: a real schedule (n > 1 followers, prompt logprobs, penalties,
chunking, preemption) pickles without a single live engine object, round-trips equal, and the part
other ranks get carries no sampling state."""

from __future__ import annotations

import io
import pickle

from npu_serve import SamplingParams
from npu_serve.engine.messages import RunnerOutput, SchedulerOutput, TokenLogprobs
from npu_serve.engine.request import Request
from npu_serve.engine.scheduler import Scheduler, SchedulerConfig


class _NoLiveObjects(pickle.Pickler):
    def reducer_override(self, obj):
        assert not isinstance(obj, Request), "a live Request inside a message"
        return NotImplemented


def dumps(obj) -> bytes:
    buf = io.BytesIO()
    _NoLiveObjects(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def params(**kw) -> SamplingParams:
    p = SamplingParams(**kw)
    p.all_stop_token_ids = {3}
    return p


def make_scheduler() -> Scheduler:
    s = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=12, max_model_len=64, block_size=4,
                                  num_blocks=12))
    kids = [Request(f"n#{i}", list(range(10, 20)), params(n=3, temperature=1.0, seed=5, max_tokens=6),
                    output_index=i, parent_id="n") for i in range(3)]
    s.add_request(kids[0], kids[1:])
    s.add_request(Request("lp#0", list(range(30, 45)), params(temperature=0, prompt_logprobs=2, max_tokens=3),
                          parent_id="lp"))
    s.add_request(Request("pen#0", [5, 6, 5], params(temperature=0.8, repetition_penalty=1.3, min_tokens=2,
                                                        max_tokens=30), parent_id="pen"))
    s.add_request(Request("plain#0", [7, 8, 9], params(temperature=0, max_tokens=30), parent_id="plain"))
    return s


def test_every_step_pickles_without_live_objects_and_round_trips():
    s = make_scheduler()
    seen_forks = seen_prompt_rows = seen_history = 0
    for step in range(200):
        if not s.has_unfinished:
            break
        out = s.schedule()
        data = dumps(out)
        back = pickle.loads(data)
        assert back == out and isinstance(back, SchedulerOutput)
        workers = out.for_workers()
        assert workers.sampling == {} and workers.scheduled == out.scheduled
        assert len(dumps(workers)) < len(data) or not out.sampling
        for x in out.scheduled:
            req = s.requests[x.request_id]
            assert x.token_ids == req.token_slice(x.start, x.start + x.num_new_tokens)
            assert x.block_ids == s.kv.block_ids(x.request_id)
            assert (x.request_id in out.sampling) == (x.sample or x.prompt_logprob_rows > 0)
        for rid, sr in out.sampling.items():
            req = s.requests[rid]
            seen_forks += len(sr.fork_children)
            seen_prompt_rows += len(sr.prompt_logprob_targets)
            if rid == "pen#0":  # repetition penalty and min_tokens read both histories: copies, not the lists
                assert list(sr.prompt_token_ids) == req.prompt_token_ids and sr.prompt_token_ids is not req.prompt_token_ids
                assert list(sr.output_token_ids) == req.output_token_ids
                seen_history += 1
            if rid == "plain#0":
                assert sr.prompt_token_ids == () and sr.output_token_ids == ()
        sampled = {}
        for x in out.scheduled:
            if x.sample:
                for r in (out.sampling[x.request_id], *out.sampling[x.request_id].fork_children):
                    sampled[r.request_id] = (step + r.output_index) % 50 + 4
        s.update(out, sampled)
    assert not s.has_unfinished
    assert seen_forks == 2 and seen_prompt_rows == 14 and seen_history > 0


def test_runner_output_pickles():
    out = RunnerOutput(sampled={"a": 1}, logprobs={"a": TokenLogprobs(1, -0.5, 1, [1, 2], [-0.5, -1.0])},
                       beam_candidates={"b": [(3, -0.1)]}, prompt_logprobs={"c": (0, [TokenLogprobs(4, -2.0, 3, [], [])])})
    assert pickle.loads(dumps(out)) == out


def test_update_refuses_a_step_it_did_not_schedule():
    s = make_scheduler()
    first = s.schedule()
    s.update(first, {x.request_id: 4 for x in first.scheduled if x.sample} | {"n#1": 4, "n#2": 4})
    try:
        s.update(first, {})
    except ValueError as e:
        assert "schedule()" in str(e)
    else:
        raise AssertionError("applying a step twice must fail")
