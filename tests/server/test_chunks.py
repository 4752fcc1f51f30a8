"""SSE chunk formatting: the exact JSON of every chunk for given engine snapshots (no engine needed:
the snapshots are RequestOutput values as the engine hands them over)."""

from __future__ import annotations

import json

from npu_serve.outputs import CompletionOutput, RequestOutput
from npu_serve.server.chunks import ChatStreamBuilder, CompletionStreamBuilder, StreamSettings

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def snap(*choices, finished=False) -> RequestOutput:
    outs = [CompletionOutput(index=i, text=t, token_ids=list(range(k)), finish_reason=f, stop_reason=s)
            for i, (t, k, f, s) in enumerate(choices)]
    return RequestOutput("r", None, [1, 2, 3], outs, finished)


def run(builder, snaps) -> list[dict]:
    lines = builder.start()
    for s in snaps:
        lines += builder.on_output(s)
    final = builder.final_usage_chunk()
    if final:
        lines.append(final)
    return [json.loads(x) for x in lines]


def settings(**kw) -> StreamSettings:
    base = dict(request_id="chatcmpl-1", model="m", created=7, n=1, prompt_tokens=3)
    base.update(kw)
    return StreamSettings(**base)


def test_chat_without_usage_has_no_usage_key():
    chunks = run(ChatStreamBuilder(settings()), [snap(("Hel", 1, None, None)), snap(("Hello", 2, "stop", None))])
    assert chunks == [
        {**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}]},
        {**HEAD, "choices": [{"index": 0, "delta": {"content": "Hel"}, "logprobs": None, "finish_reason": None}]},
        {**HEAD, "choices": [{"index": 0, "delta": {"content": "lo"}, "logprobs": None, "finish_reason": "stop",
                              "stop_reason": None}]},
    ]


def test_chat_include_usage_n2_sums_all_choices():
    b = ChatStreamBuilder(settings(n=2, include_usage=True))
    chunks = run(b, [snap(("a", 1, None, None), ("b", 1, None, None)),
                     snap(("ab", 2, "length", None), ("b", 1, None, None)),
                     snap(("ab", 2, "length", None), ("bcd", 3, "stop", "d"), finished=True)])
    assert [c["usage"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in chunks[:-1]] == [
        (0, {"role": "assistant"}), (1, {"role": "assistant"}),
        (0, {"content": "a"}), (1, {"content": "b"}), (0, {"content": "b"}), (1, {"content": "cd"})]
    assert chunks[4]["choices"][0]["finish_reason"] == "length"
    assert chunks[5]["choices"][0]["finish_reason"] == "stop" and chunks[5]["choices"][0]["stop_reason"] == "d"
    assert chunks[-1] == {**HEAD, "choices": [],
                          "usage": {"prompt_tokens": 3, "total_tokens": 8, "completion_tokens": 5}}


def test_continuous_usage_counts_each_chunk():
    b = ChatStreamBuilder(settings(include_usage=True, continuous_usage=True))
    chunks = run(b, [snap(("x", 1, None, None)), snap(("xy", 2, "stop", None), finished=True)])
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 2]


def test_reasoning_deltas_stream_thinking_first():
    b = ChatStreamBuilder(settings(), reasoning="deepseek_r1")
    chunks = run(b, [snap(("ok </th", 2, None, None)), snap(("ok </think>yes", 4, "stop", None), finished=True)])
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant"}, {"reasoning_content": "ok "}, {"content": "yes"}]


def test_completion_chunks_carry_every_choice_field():
    b = CompletionStreamBuilder(settings(request_id="cmpl-1", include_usage=True))
    chunks = run(b, [snap((" a", 1, None, None)), snap((" a b", 2, "length", None), finished=True)])
    head = {"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m"}
    assert chunks == [
        {**head, "choices": [{"index": 0, "text": " a", "logprobs": None, "finish_reason": None, "stop_reason": None}],
         "usage": None},
        {**head, "choices": [{"index": 0, "text": " b", "logprobs": None, "finish_reason": "length",
                              "stop_reason": None}], "usage": None},
        {**head, "choices": [], "usage": {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2}},
    ]


def test_held_back_text_makes_no_empty_chunk():
    # The engine withholds text that may be a stop string: tokens advance, text does not.
    b = ChatStreamBuilder(settings())
    chunks = run(b, [snap(("a", 1, None, None)), snap(("a", 2, None, None)), snap(("a", 3, "stop", "xy"))])
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant"}, {"content": "a"}, {"content": ""}]
