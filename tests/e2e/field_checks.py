"""One check per *implemented* row of docs/api-fields.md, run against the live tiny server by
tests/e2e/test_api_fields_e2e.py: each sends the field and asserts the effect the row promises.

Sampling fields are checked against an oracle: the same engine, driven directly with the
SamplingParams the row says the field maps to, must give the server's text, finish reasons and
token counts, and (the premise that makes the check able to fail) a different result than the
request without the field. Prompt-shaping fields are checked by the prompt token count the
tokenizer gives for what the row says is rendered.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import requests

from npu_serve import SamplingParams
from tests.e2e.conftest import sse_lines

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
MSGS = [{"role": "user", "content": "Tell me a story."}]
PROMPT = "The cat sat on the mat and"
MAX = 8  # max_tokens of every base request


def base(endpoint: str) -> dict:
    first = {"messages": MSGS} if endpoint == "chat" else {"prompt": PROMPT}
    return {"model": "tiny", **first, "temperature": 0, "max_tokens": MAX}


def post(server, endpoint: str, extra: dict, drop: tuple[str, ...] = ()) -> requests.Response:
    """POST base(endpoint) without the `drop` keys, updated with `extra`."""
    body = {k: v for k, v in base(endpoint).items() if k not in drop}
    return server.post(PATHS[endpoint], {**body, **extra})


def ok(server, endpoint: str, extra: dict, drop: tuple[str, ...] = ()) -> dict:
    r = post(server, endpoint, extra, drop)
    assert r.status_code == 200, r.text
    return r.json()


def refused(r: requests.Response, param: str) -> dict:
    body = r.json()
    assert r.status_code == 400, body
    assert body["param"] == param and param in body["message"], body
    return body


def text_of(choice: dict) -> str:
    return choice["text"] if "text" in choice else choice["message"]["content"]


def outcome(j: dict) -> tuple:
    """What a request produced, minus ids and timestamps."""
    return [(text_of(c), c["finish_reason"], c.get("stop_reason")) for c in j["choices"]], j["usage"]


def stream(server, endpoint: str, extra: dict) -> list[dict]:
    r = post(server, endpoint, {**extra, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    payloads = sse_lines(r.content)
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def streamed_text(chunks: list[dict]) -> str:
    return "".join((c.get("text") if "text" in c else c["delta"].get("content")) or ""
                   for ch in chunks for c in ch["choices"])


def prompt_ids(server, endpoint: str, extra: dict | None = None) -> list[int]:
    """The prompt token ids the row says the server builds (chat: the model's template)."""
    tok = server.engine.tokenizer
    body = {**base(endpoint), **(extra or {})}
    if endpoint == "completions":
        return list(tok.encode(body["prompt"]))
    text = tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
    return list(tok.encode(text, add_special_tokens=False))


def offline(server, ids: list[int], **params) -> list:
    """The engine behind the server, driven directly: the oracle for sampling fields."""
    async def run():
        final = None
        async for out in server.engine.generate(ids, SamplingParams(**params), f"oracle-{uuid.uuid4().hex}"):
            final = out
        return final

    return asyncio.run(run()).outputs


def as_params(body: dict) -> dict:
    """SamplingParams kwargs for the sampling fields of a request body (same names)."""
    out = {k: v for k, v in body.items() if k not in ("model", "messages", "prompt", "stream", "logprobs",
                                                      "top_logprobs")}
    if "logit_bias" in out:
        out["logit_bias"] = {int(k): v for k, v in out["logit_bias"].items()}
    return out


def assert_same_as_offline(j: dict, outs: list) -> None:
    got = [(text_of(c), c["finish_reason"], c["stop_reason"]) for c in j["choices"]]
    assert got == [(o.text, str(o.finish_reason), o.stop_reason) for o in outs]
    assert j["usage"]["completion_tokens"] == sum(len(o.token_ids) for o in outs)


def sampling(value, context: dict | None = None, differs: bool = True) -> Callable:
    """A sampling field: the server equals the oracle run with the field, and (premise) the oracle
    run without it differs."""
    context = context or {}

    def check(server, endpoint, name):
        body = {**base(endpoint), **context, name: value}
        j = ok(server, endpoint, {**context, name: value})
        ids = prompt_ids(server, endpoint)
        with_field = offline(server, ids, **as_params(body))
        assert_same_as_offline(j, with_field)
        if differs:
            without = offline(server, ids, **as_params({**base(endpoint), **context}))
            assert [o.token_ids for o in without] != [o.token_ids for o in with_field], "premise: the field matters"

    return check


def top_tokens(server, endpoint: str, k: int) -> list[int]:
    """The k most likely first tokens after the base prompt (the model's own distribution)."""
    out = offline(server, prompt_ids(server, endpoint), temperature=0, max_tokens=1, logprobs=k)[0]
    return [t for t, _ in sorted(out.logprobs[0].items(), key=lambda kv: -kv[1].logprob)][:k]


def beam(value, stop_sets: list[slice]) -> Callable:
    """A beam-search field (n 2). Whether it matters depends on when hypotheses finish, so stop
    tokens are taken from the model's own top first tokens: the first of `stop_sets` (slices of
    that ranking) under which the oracle with and without the field differ is the premise, then
    the server must equal the oracle with it."""
    def check(server, endpoint, name):
        tops = top_tokens(server, endpoint, 5)
        ids = prompt_ids(server, endpoint)
        for stops in stop_sets:
            context = {"use_beam_search": True, "n": 2, "stop_token_ids": tops[stops]}
            with_field = offline(server, ids, **as_params({**base(endpoint), **context, name: value}))
            without = offline(server, ids, **as_params({**base(endpoint), **context}))
            if [o.token_ids for o in with_field] != [o.token_ids for o in without]:
                assert_same_as_offline(ok(server, endpoint, {**context, name: value}), with_field)
                return
        raise AssertionError(f"premise: no stop set among {stop_sets} makes {name}={value!r} matter")

    return check


# ---- the non-sampling checks --------------------------------------------------------------------


def check_model(server, endpoint, name):
    assert ok(server, endpoint, {})["model"] == "tiny"
    r = post(server, endpoint, {"model": "gpt-4"})
    assert r.status_code == 404 and r.json()["param"] == "model"


def check_messages(server, endpoint, name):
    other = [{"role": "user", "content": "Count to three, slowly, please."}]
    for msgs in (MSGS, other):
        assert ok(server, endpoint, {"messages": msgs})["usage"]["prompt_tokens"] == len(
            prompt_ids(server, endpoint, {"messages": msgs}))
    assert len(prompt_ids(server, endpoint, {"messages": other})) != len(prompt_ids(server, endpoint))


def check_prompt(server, endpoint, name):
    ids = prompt_ids(server, endpoint)[2:]
    j = ok(server, endpoint, {"prompt": ids})
    assert j["usage"]["prompt_tokens"] == len(ids)
    assert_same_as_offline(j, offline(server, ids, temperature=0, max_tokens=MAX))


def cap(field: str) -> Callable:
    def check(server, endpoint, name):
        j = ok(server, endpoint, {field: 3, "ignore_eos": True}, drop=("max_tokens",))
        assert j["usage"]["completion_tokens"] == 3 and j["choices"][0]["finish_reason"] == "length"
        r = ok(server, endpoint, {field: 5, "ignore_eos": True}, drop=("max_tokens",))
        assert r["usage"]["completion_tokens"] == 5
        if field == "max_completion_tokens":
            both = post(server, endpoint, {"max_tokens": 4, "max_completion_tokens": 3})
            body = refused(both, "max_completion_tokens")
            assert "max_tokens" in body["message"]
            agree = ok(server, endpoint, {"max_tokens": 3, "max_completion_tokens": 3, "ignore_eos": True})
            assert agree["usage"]["completion_tokens"] == 3

    return check


VARIED = {"frequency_penalty": 2.0, "ignore_eos": True}  # greedy text without repeats


def check_stop(server, endpoint, name):
    full = text_of(ok(server, endpoint, VARIED)["choices"][0])
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip() and stop in full
    choice = ok(server, endpoint, {**VARIED, "stop": [stop]})["choices"][0]
    assert text_of(choice) == full[:full.index(stop)]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", stop)


def check_include_stop_str(server, endpoint, name):
    full = text_of(ok(server, endpoint, VARIED)["choices"][0])
    stop = full[len(full) // 2:len(full) // 2 + 3]
    choice = ok(server, endpoint, {**VARIED, "stop": [stop], name: True})["choices"][0]
    assert text_of(choice) == full[:full.index(stop) + len(stop)]


def check_stop_token_ids(server, endpoint, name):
    ids = prompt_ids(server, endpoint)
    greedy = offline(server, ids, temperature=0, max_tokens=MAX, **VARIED)[0].token_ids
    stop_id = greedy[3] if greedy[3] not in greedy[:3] else greedy[0]
    sampling([stop_id], VARIED)(server, endpoint, name)
    choice = ok(server, endpoint, {**VARIED, name: [stop_id]})["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", stop_id)


def check_logprobs(server, endpoint, name):
    extra = {"logprobs": True, "top_logprobs": 2} if endpoint == "chat" else {"logprobs": 2}
    j = ok(server, endpoint, extra)
    assert ok(server, endpoint, {})["choices"][0]["logprobs"] is None
    out = offline(server, prompt_ids(server, endpoint), temperature=0, max_tokens=MAX, logprobs=2)[0]
    oracle = [step[t].logprob for t, step in zip(out.token_ids, out.logprobs)]
    lp = j["choices"][0]["logprobs"]
    if endpoint == "chat":
        got = [c["logprob"] for c in lp["content"]]
        assert all(len(c["top_logprobs"]) == 2 for c in lp["content"])
    else:
        got = lp["token_logprobs"]
        assert all(2 <= len(t) <= 3 for t in lp["top_logprobs"])  # the sampled token plus the top 2
    assert len(got) == len(oracle) and all(abs(a - b) < 1e-4 for a, b in zip(got, oracle))


def check_top_logprobs(server, endpoint, name):
    for k in (1, 3):
        content = ok(server, endpoint, {"logprobs": True, name: k, "ignore_eos": True})["choices"][0]["logprobs"]["content"]
        assert len(content) == MAX and all(len(c["top_logprobs"]) == k for c in content)
    refused(post(server, endpoint, {name: 2}), name)  # needs logprobs: true


def check_prompt_logprobs(server, endpoint, name):
    j = ok(server, endpoint, {name: 1})
    plp = j["prompt_logprobs"] if endpoint == "chat" else j["choices"][0]["prompt_logprobs"]
    ids = prompt_ids(server, endpoint)
    assert len(plp) == len(ids) == j["usage"]["prompt_tokens"] and plp[0] is None
    assert all(str(t) in step and 1 <= len(step) <= 2 for t, step in zip(ids[1:], plp[1:]))
    plain = ok(server, endpoint, {})
    assert (plain["prompt_logprobs"] if endpoint == "chat" else plain["choices"][0]["prompt_logprobs"]) is None
    refused(post(server, endpoint, {name: 1, "stream": True}), name)


def check_skip_special_tokens(server, endpoint, name):
    forced = {"logit_bias": {"1": 100}, "ignore_eos": True, "max_tokens": 3}  # token 1 is <|im_start|>
    assert text_of(ok(server, endpoint, forced)["choices"][0]) == ""
    assert text_of(ok(server, endpoint, {**forced, name: False})["choices"][0]) == "<|im_start|>" * 3


def check_truncate_prompt_tokens(server, endpoint, name):
    j = ok(server, endpoint, {name: 3})
    assert j["usage"]["prompt_tokens"] == 3
    assert_same_as_offline(j, offline(server, prompt_ids(server, endpoint)[-3:], temperature=0, max_tokens=MAX))


def check_echo(server, endpoint, name):
    if endpoint == "completions":
        plain = text_of(ok(server, endpoint, {})["choices"][0])
        assert text_of(ok(server, endpoint, {name: True})["choices"][0]) == PROMPT + plain
        return
    msgs = MSGS + [{"role": "assistant", "content": "Once"}]
    extra = {"messages": msgs, "add_generation_prompt": False}
    plain = text_of(ok(server, endpoint, extra)["choices"][0])
    assert text_of(ok(server, endpoint, {**extra, name: True})["choices"][0]) == "Once" + plain


def check_add_special_tokens(server, endpoint, name):
    """Accepted and handed to the tokenizer; this tokenizer adds no BOS, so the effect itself is
    shown with a BOS-adding copy of it in tests/server/test_protocol.py."""
    tok = server.engine.tokenizer
    for value in (True, False):
        j = ok(server, endpoint, {name: value})
        if endpoint == "completions":
            assert j["usage"]["prompt_tokens"] == len(tok.encode(PROMPT, add_special_tokens=value))
        else:
            text = tok.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True)
            assert j["usage"]["prompt_tokens"] == len(tok.encode(text, add_special_tokens=value))


def template_count(server, messages, **kwargs) -> int:
    tok = server.engine.tokenizer
    return len(tok.encode(tok.apply_chat_template(messages, tokenize=False, **kwargs), add_special_tokens=False))


def check_add_generation_prompt(server, endpoint, name):
    assert ok(server, endpoint, {name: False})["usage"]["prompt_tokens"] == template_count(
        server, MSGS, add_generation_prompt=False)
    assert template_count(server, MSGS, add_generation_prompt=False) < len(prompt_ids(server, endpoint))


def check_continue_final_message(server, endpoint, name):
    msgs = MSGS + [{"role": "assistant", "content": "Once upon"}]
    closed = template_count(server, msgs, add_generation_prompt=False)
    open_ = template_count(server, msgs, add_generation_prompt=False, continue_final_message=True)
    assert open_ < closed  # the template's end-of-turn is left off
    j = ok(server, endpoint, {"messages": msgs, "add_generation_prompt": False, name: True})
    assert j["usage"]["prompt_tokens"] == open_
    refused(post(server, endpoint, {"messages": msgs, name: True}), name)  # add_generation_prompt defaults to true


CONTENTS = "{% for m in messages %}{{ m.content }}{% endfor %}"


def rendered_count(server, text: str) -> int:
    return len(server.engine.tokenizer.encode(text, add_special_tokens=False))


def check_chat_template(server, endpoint, name):
    j = ok(server, endpoint, {name: "Q: " + CONTENTS + " A:"})
    assert j["usage"]["prompt_tokens"] == rendered_count(server, "Q: Tell me a story. A:")


def check_chat_template_kwargs(server, endpoint, name):
    template = "{{ persona }}: " + CONTENTS
    j = ok(server, endpoint, {"chat_template": template, name: {"persona": "A patient storyteller"}})
    assert j["usage"]["prompt_tokens"] == rendered_count(server, "A patient storyteller: Tell me a story.")


def template_variable(field: str, value, rendered: str, extra: dict | None = None) -> Callable:
    """A field handed to the chat template as a variable of the same name: rendered by a template
    that reads it, refused (naming it) by the model's own template, which does not."""
    def check(server, endpoint, name):
        template = {"tools": "{% for t in tools %}{{ t.function.name }} {% endfor %}",
                    "documents": "{% for d in documents %}{{ d.text }} {% endfor %}",
                    "reasoning_effort": "effort {{ reasoning_effort }} "}[field] + CONTENTS
        j = ok(server, endpoint, {**(extra or {}), "chat_template": template, field: value})
        assert j["usage"]["prompt_tokens"] == rendered_count(server, rendered + "Tell me a story.")
        refused(post(server, endpoint, {**(extra or {}), field: value}), field)

    return check


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def check_tools(server, endpoint, name):
    template_variable("tools", TOOLS, "get_weather ", {"tool_choice": "none"})(server, endpoint, name)
    template = "{% for t in tools %}{{ t.function.name }} {% endfor %}" + CONTENTS
    refused(post(server, endpoint, {"chat_template": template, "tools": TOOLS}), "tools")  # OpenAI's default: auto


def check_tool_choice(server, endpoint, name):
    assert outcome(ok(server, endpoint, {name: "none"})) == outcome(ok(server, endpoint, {}))
    for value in ("auto", "required", {"type": "function", "function": {"name": "get_weather"}}):
        refused(post(server, endpoint, {"tools": TOOLS, name: value}), name)


def check_reasoning_effort(server, endpoint, name):
    template_variable("reasoning_effort", "low", "effort low ")(server, endpoint, name)
    refused(post(server, endpoint, {"chat_template": "{{ reasoning_effort }}" + CONTENTS, name: "extreme"}), name)


def check_request_id(server, endpoint, name):
    prefix = "chatcmpl" if endpoint == "chat" else "cmpl"
    assert ok(server, endpoint, {name: "trace-42"})["id"] == f"{prefix}-trace-42"
    assert {c["id"] for c in stream(server, endpoint, {name: "trace-42"})} == {f"{prefix}-trace-42"}
    assert ok(server, endpoint, {})["id"] != ok(server, endpoint, {})["id"]


def check_stream(server, endpoint, name):
    chunks = stream(server, endpoint, {})
    assert streamed_text(chunks) == text_of(ok(server, endpoint, {})["choices"][0])


def check_stream_options(server, endpoint, name):
    refused(post(server, endpoint, {name: {"include_usage": True}}), name)  # only with stream: true
    assert stream(server, endpoint, {name: None})[-1]["choices"]  # null: no usage chunk


def check_include_usage(server, endpoint, name):
    chunks = stream(server, endpoint, {"stream_options": {"include_usage": True}})
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == ok(server, endpoint, {})["usage"]
    assert all("usage" not in c for c in stream(server, endpoint, {"stream_options": {"include_usage": False}}))


def check_continuous_usage(server, endpoint, name):
    chunks = stream(server, endpoint, {"stream_options": {"include_usage": True, "continuous_usage_stats": True},
                                       "ignore_eos": True})
    counts = [c["usage"]["completion_tokens"] for c in chunks[:-1]]
    assert counts == sorted(counts) and counts[-1] == MAX
    assert chunks[-1]["usage"]["completion_tokens"] == MAX


def check_use_beam_search(server, endpoint, name):
    # Were the field dropped, n 2 with greedy would be a 400: no "differs" premise needed.
    sampling(True, {"n": 2}, differs=False)(server, endpoint, name)
    for extra in ({"logit_bias": {"5": 10}}, {"min_tokens": 2}, {"presence_penalty": 1.0}):
        refused(post(server, endpoint, {name: True, "n": 2, **extra}), next(iter(extra)))


BIAS_EOS = {"logit_bias": {"2": 100}}  # token 2 is the tiny models' EOS
SAMPLED = {"temperature": 1.0, "seed": 7}

IMPLEMENTED: dict[str, Callable] = {
    "model": check_model,
    "messages": check_messages,
    "prompt": check_prompt,
    "max_tokens": cap("max_tokens"),
    "max_completion_tokens": cap("max_completion_tokens"),
    "n": sampling(3, SAMPLED),
    "best_of": sampling(3, {"temperature": 1.0, "seed": 3}),
    "temperature": sampling(1.0, {"seed": 7}),
    "top_p": sampling(0.01, SAMPLED),
    "top_k": sampling(1, SAMPLED),
    "min_p": sampling(0.9, SAMPLED),
    "seed": sampling(8, SAMPLED),
    "frequency_penalty": sampling(2.0),
    "presence_penalty": sampling(2.0),
    "repetition_penalty": sampling(2.0),
    "logit_bias": sampling({"1234": 100}),
    "stop": check_stop,
    "stop_token_ids": check_stop_token_ids,
    "include_stop_str_in_output": check_include_stop_str,
    "ignore_eos": sampling(True, BIAS_EOS),
    "min_tokens": sampling(4, BIAS_EOS),
    "logprobs": check_logprobs,
    "top_logprobs": check_top_logprobs,
    "prompt_logprobs": check_prompt_logprobs,
    "use_beam_search": check_use_beam_search,
    # A stop token at a runner-up first token finishes a 1-token hypothesis early: length_penalty 0
    # prefers it to the long beams; early_stopping may end the search once enough have finished.
    "length_penalty": beam(0.0, [slice(1, 2), slice(1, 3)]),
    "early_stopping": beam(True, [slice(1, k) for k in (2, 3, 4, 5)] + [slice(2, k) for k in (3, 4, 5)]),
    "skip_special_tokens": check_skip_special_tokens,
    "truncate_prompt_tokens": check_truncate_prompt_tokens,
    "echo": check_echo,
    "add_special_tokens": check_add_special_tokens,
    "add_generation_prompt": check_add_generation_prompt,
    "continue_final_message": check_continue_final_message,
    "chat_template": check_chat_template,
    "chat_template_kwargs": check_chat_template_kwargs,
    "documents": template_variable("documents", [{"title": "t", "text": "Cats purr."}], "Cats purr. "),
    "tools": check_tools,
    "tool_choice": check_tool_choice,
    "reasoning_effort": check_reasoning_effort,
    "request_id": check_request_id,
    "stream": check_stream,
    "stream_options": check_stream_options,
    "stream_options.include_usage": check_include_usage,
    "stream_options.continuous_usage_stats": check_continuous_usage,
}
