"""The offline API's contract: names, ordering, refusals, stop handling, n > 1 fan-out."""

from __future__ import annotations

import pytest

from npu_serve import LLM, SamplingParams
from npu_serve.errors import InvalidParameter, PromptTooLong
from tests.executor_wrapper import ExecutorWrapper


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(str(tiny_llama_dir), device="cpu", dtype="float32", max_model_len=256)


def test_outputs_in_order_with_per_prompt_params(llm):
    prompts = ["Hello there", [5, 6, 7, 8], "Another prompt"]
    params = [SamplingParams(temperature=0, max_tokens=k, ignore_eos=True) for k in (3, 5, 7)]
    outs = llm.generate(prompts, params)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 5, 7]
    assert outs[1].prompt_token_ids == [5, 6, 7, 8]
    assert all(o.finished and o.outputs[0].finish_reason == "length" for o in outs)
    assert outs[0].outputs[0].text == llm.tokenizer.decode(outs[0].outputs[0].token_ids, skip_special_tokens=True)


def test_prompt_longer_than_max_model_len_is_refused(llm):
    with pytest.raises(PromptTooLong) as err:
        llm.generate([list(range(10, 10 + 300))], SamplingParams(max_tokens=4))
    assert "maximum context length is 256" in str(err.value)
    assert llm.engine.scheduler.kv.num_used_blocks() == 0 and not llm.engine.has_unfinished


def test_generation_stops_at_the_context_limit(llm):
    out = llm.generate([list(range(10, 10 + 250))], SamplingParams(temperature=0, max_tokens=None, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 6 and out.outputs[0].finish_reason == "length"


def test_stop_string_truncates_and_names_the_reason(llm):
    base = llm.generate(["The cache"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    assert len(base.text) > 4
    stop = base.text[2:5]
    out = llm.generate(["The cache"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop=[stop]))[0]
    assert out.outputs[0].text == base.text[: base.text.index(stop)]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == stop


def test_stop_token_ids(llm):
    base = llm.generate(["abc"], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0].outputs[0]
    target = base.token_ids[3]
    out = llm.generate(["abc"], SamplingParams(temperature=0, max_tokens=8, stop_token_ids=[target]))[0].outputs[0]
    assert out.token_ids == base.token_ids[: base.token_ids.index(target) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == target


def test_n_outputs_share_prompt_blocks(llm):
    prompt = list(range(100, 100 + 64))  # 4 full blocks of 16
    before = llm.engine.scheduler.num_prefix_hit_tokens
    out = llm.generate([prompt], SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=6, ignore_eos=True))[0]
    assert len(out.outputs) == 4 and [o.index for o in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    # children 2..4 fork from the first after its one prompt computation: no prefix-cache lookups
    # (tests/engine/test_fork_blocks.py counts the shared blocks)
    assert llm.engine.scheduler.num_prefix_hit_tokens - before == 0
    assert llm.engine.scheduler.kv.num_used_blocks() == 0


def test_seeded_sampling_is_reproducible(llm):
    p = SamplingParams(temperature=1.0, seed=123, max_tokens=10, ignore_eos=True)
    a = llm.generate(["seeded"], p)[0].outputs[0].token_ids
    b = llm.generate(["seeded", "other", "more"], [p, SamplingParams(temperature=1.0, max_tokens=10),
                                                   SamplingParams(temperature=0.7, max_tokens=3)])[0].outputs[0].token_ids
    assert a == b


def test_chat_applies_the_template(llm):
    out = llm.chat([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=2))[0]
    text = llm.tokenizer.decode(out.prompt_token_ids)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")


def test_bad_params_are_refused_with_the_parameter_named():
    with pytest.raises(InvalidParameter) as err:
        SamplingParams(n=2, temperature=0)
    assert err.value.param == "n"
    with pytest.raises(InvalidParameter) as err:
        SamplingParams(presence_penalty=2.5)
    assert err.value.param == "presence_penalty"


def test_stats_count_what_the_engine_did(llm):
    before = llm.stats()
    prompt = list(range(300, 300 + 40))
    llm.generate([prompt, prompt], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    after = llm.stats()
    assert (after.running, after.waiting, after.kv_blocks_used) == (0, 0, 0)
    assert after.kv_blocks_total == llm.facts.num_blocks - 1 and after.tensor_parallel_size == 1
    assert after.num_steps - before.num_steps >= 3
    assert after.prefix_hit_tokens - before.prefix_hit_tokens == 32  # the 2nd hit the 1st's 2 full blocks


def test_async_engine_answers_waiters_on_shutdown_and_refuses_after(tiny_llama_dir):
    import asyncio

    from npu_serve import AsyncEngine
    from npu_serve.engine.client import EngineClient
    from npu_serve.errors import EngineDeadError

    async def main():
        engine = AsyncEngine(str(tiny_llama_dir), device="cpu", dtype="float32", max_model_len=2048)
        assert isinstance(engine, EngineClient) and engine.is_healthy and engine.dead_reason is None
        params = SamplingParams(temperature=0, max_tokens=2000, ignore_eos=True)  # far longer than the test

        async def consume():
            async for _ in engine.generate("long one", params, request_id="long"):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        await engine.shutdown()
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(task, 10)  # answered, not left hanging
        assert not engine.is_healthy and engine.dead_reason == "the engine was shut down"
        with pytest.raises(EngineDeadError):
            async for _ in engine.generate("after", params, request_id="late"):
                pass

    asyncio.run(main())


class _FailWhen(ExecutorWrapper):
    """The real executor, except that a forward decoding a request whose prompt is `poison` raises,
    as a device fault (or a model the backend mishandles) would."""

    def __init__(self, real, poison: list[int]):
        super().__init__(real)
        self.poison, self.poisoned = poison, set()

    def execute(self, so):
        # The step message carries token ids, not requests: a request whose first chunk is the poison
        # prompt is marked, and its first decode fails.
        for s in so.scheduled:
            if s.start == 0 and list(s.token_ids) == self.poison:
                self.poisoned.add(s.request_id)
        if any(s.request_id in self.poisoned and s.start >= len(self.poison) for s in so.scheduled):
            raise RuntimeError("injected device fault")
        return self.real.execute(so)

    def __getattr__(self, name):  # watch(), shutdown(): the real executor's
        return getattr(self.real, name)


def test_generate_raises_when_every_request_fails_and_reports_partial_failures(llm):
    from npu_serve.errors import RequestFailed

    real = llm.engine.executor
    llm.engine.executor = _FailWhen(real, [5, 6, 7])
    try:
        with pytest.raises(RequestFailed, match="every request failed inside the engine: RuntimeError: injected "
                                                "device fault"):
            llm.generate([[5, 6, 7], [5, 6, 7]], SamplingParams(temperature=0, max_tokens=3))
        assert llm.engine.scheduler.kv.num_used_blocks() == 0 and not llm.engine.has_unfinished
        # Only some failed (the first is done after its prefill, before the other's decode fails):
        # the others' outputs come back, the failed one says why.
        outs = llm.generate([[8, 9], [5, 6, 7]], [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
                                                  for n in (1, 3)])
    finally:
        llm.engine.executor = real
    assert outs[0].error is None and len(outs[0].outputs[0].token_ids) == 1
    assert outs[1].outputs[0].finish_reason == "error" and "injected device fault" in outs[1].error


def test_step_budget_defaults_to_the_platforms_and_a_given_one_is_kept(llm, tiny_llama_dir):
    """No --max-num-batched-tokens: the CPU's 512 (device/cpu.py says why); a given budget wins, and the
    scheduler chunks a prompt longer than it over several steps."""
    assert llm.engine.scheduler.config.max_num_batched_tokens == 512
    small = LLM(tiny_llama_dir, device="cpu", dtype="float32", num_kv_blocks=64, max_num_batched_tokens=24)
    assert small.engine.scheduler.config.max_num_batched_tokens == 24
    core = small.engine
    core.add(core.make_parent("long", list(range(5, 65)), SamplingParams(temperature=0.0, max_tokens=1)))
    steps = 0
    while core.has_unfinished:
        core.step()
        steps += 1
    assert steps == 3  # 60 prompt tokens in chunks of 24, 24 and 12
