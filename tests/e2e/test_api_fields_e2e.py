"""Every row of docs/api-fields.md against a live server on 127.0.0.1 (the tiny model): implemented
fields change the output as the row says (tests/e2e/field_checks.py), ignored ones change nothing,
refused ones answer 400 naming the field (null and the row's no-op value change nothing), and a
field in no row is a 400 unless the server runs with --accept-unknown-fields."""

from __future__ import annotations

import json
import logging

import pytest

from npu_serve.server.app import build_app
from npu_serve.server.config import ServerConfig
from npu_serve.server.fields import ENDPOINTS, Status, rules
from tests.e2e.conftest import LiveServer
from tests.e2e.field_checks import IMPLEMENTED, ok, outcome, post, refused, stream

# A value a real client would send for each ignored field, and the request it rides on: the
# context makes the field's would-be effect visible (special tokens in the text, a stream).
FORCED_SPECIAL = {"logit_bias": {"1": 100}, "ignore_eos": True, "skip_special_tokens": False}
IGNORED: dict[str, tuple[object, dict]] = {
    "stream_options.include_obfuscation": (True, {}),
    "spaces_between_special_tokens": (False, FORCED_SPECIAL),
    "parallel_tool_calls": (True, {}),
    "user": ("user-1234", {}),
    "safety_identifier": ("hash-of-user", {}),
    "metadata": ({"team": "search"}, {}),
    "store": (True, {}),
    "service_tier": ("flex", {}),
    "prompt_cache_key": ("tenant-7", {}),
    "prompt_cache_options": ({"mode": "explicit", "ttl": "30m"}, {}),
    "prompt_cache_retention": ("24h", {}),
    "mm_processor_kwargs": ({"num_crops": 4}, {}),
    "guided_decoding_backend": ("xgrammar", {}),
    "guided_whitespace_pattern": ("\\s*", {}),
}

# A value that asks for the unimplemented behaviour, for each refused field.
REFUSED: dict[str, object] = {
    "response_format": {"type": "json_object"},
    "guided_json": {"type": "object"},
    "guided_regex": "[a-z]+",
    "guided_choice": ["yes", "no"],
    "guided_grammar": "root ::= \"a\"",
    "structured_outputs": {"regex": "[a-z]+"},
    "functions": [{"name": "get_weather", "parameters": {"type": "object"}}],
    "function_call": "auto",
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"],
    "prediction": {"type": "content", "content": "Once upon a time"},
    "moderation": {"model": "omni-moderation-latest"},
    "verbosity": "low",
    "web_search_options": {},
    "include_reasoning": False,
    "bad_words": ["dragon"],
    "allowed_token_ids": [5, 6, 7],
    "logits_processors": ["my_module.MyProcessor"],
    "return_token_ids": True,
    "return_tokens_as_token_ids": True,
    "priority": 1,
    "cache_salt": "tenant-7-secret",
    "kv_transfer_params": {"do_remote_decode": True},
    "vllm_xargs": {"custom": 1},
    "max_repetition_pattern_size": 4,
    "min_repetition_pattern_size": 2,
    "repetition_min_count": 3,
    "suffix": " and they lived happily.",
    "prompt_embeds": "AAAA",
}


def rows(status: Status) -> list[tuple[str, str]]:
    return [(name, e) for name, rule in rules().items() for e in ENDPOINTS if rule.status(e) is status]


def ids(cases) -> list[str]:
    return [f"{name}-{endpoint}" for name, endpoint in cases]


def test_every_row_has_a_case():
    for status, cases in ((Status.IMPLEMENTED, IMPLEMENTED), (Status.IGNORED, IGNORED), (Status.REFUSED, REFUSED)):
        assert {name for name, _ in rows(status)} == set(cases), status


def with_field(name: str, value, context: dict) -> dict:
    head, dot, key = name.partition(".")
    if dot:  # a stream_options key: rides on a stream with usage
        return {**context, head: {"include_usage": True, key: value}}
    return {**context, name: value}


def comparable(chunks: list[dict]) -> tuple:
    """What a stream said, independent of how the text was split into chunks (a busy engine
    hands a reader coarser deltas): text and end of each choice, the final usage, the keys used."""
    texts: dict[int, str] = {}
    ends = {}
    for c in chunks:
        for ch in c["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + ((ch.get("text") if "text" in ch else
                                                                ch["delta"].get("content")) or "")
            if ch.get("finish_reason"):
                ends[ch["index"]] = (ch["finish_reason"], ch.get("stop_reason"))
    keys = sorted({k for c in chunks for k in c} | {k for c in chunks for ch in c["choices"] for k in ch})
    return texts, ends, chunks[-1].get("usage"), keys


@pytest.mark.parametrize("name,endpoint", rows(Status.IGNORED), ids=ids(rows(Status.IGNORED)))
def test_ignored_field_changes_nothing(tiny_server, caplog, name, endpoint):
    value, context = IGNORED[name]
    sent = with_field(name, value, context)
    with caplog.at_level(logging.DEBUG, logger="npu_serve.server.fields"):
        if "." in name:
            got = stream(tiny_server, endpoint, sent)
            assert comparable(got) == comparable(stream(tiny_server, endpoint, with_field(name, None, context)))
            assert not any("obfuscation" in json.dumps(c) for c in got)
        else:
            assert outcome(ok(tiny_server, endpoint, sent)) == outcome(ok(tiny_server, endpoint, context))
    assert any(name in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


@pytest.mark.parametrize("name,endpoint", rows(Status.REFUSED), ids=ids(rows(Status.REFUSED)))
def test_refused_field_is_400_naming_it(tiny_server, name, endpoint):
    body = refused(post(tiny_server, endpoint, {name: REFUSED[name]}), name)
    assert body["type"] == "BadRequestError" and f"`{name}` is not supported" in body["message"]
    plain = outcome(ok(tiny_server, endpoint, {}))
    noop = rules()[name].noop
    for accepted in [None] + ([json.loads(noop)] if noop is not None else []):
        assert outcome(ok(tiny_server, endpoint, {name: accepted})) == plain


@pytest.mark.parametrize("name,endpoint", rows(Status.IMPLEMENTED), ids=ids(rows(Status.IMPLEMENTED)))
def test_implemented_field_does_what_its_row_says(tiny_server, name, endpoint):
    IMPLEMENTED[name](tiny_server, endpoint, name)


UNKNOWN = [
    ("chat", {"temprature": 0.5}, "temprature"),
    ("completions", {"max_completion_tokens": 3}, "max_completion_tokens"),  # a chat-only field
    ("chat", {"stream": True, "stream_options": {"include_usage": True, "bogus": 1}}, "stream_options.bogus"),
]


@pytest.mark.parametrize("endpoint,extra,param", UNKNOWN)
def test_unknown_field_is_400_naming_it(tiny_server, endpoint, extra, param):
    body = refused(post(tiny_server, endpoint, extra), param)
    assert "extra_forbidden" in body["message"]


@pytest.fixture(scope="module")
def lenient_server(tiny_server):
    """The same engine behind a second app that runs with accept_unknown_fields (the CLI's
    --accept-unknown-fields)."""
    config = ServerConfig(served_model_name="tiny", accept_unknown_fields=True, warmup=False)
    server = LiveServer(build_app(tiny_server.engine, config)).start()
    yield server
    server.stop()


@pytest.mark.parametrize("endpoint,extra,param", UNKNOWN)
def test_accept_unknown_fields_drops_them_with_a_warning(tiny_server, lenient_server, caplog, endpoint, extra, param):
    with caplog.at_level(logging.WARNING, logger="npu_serve.server.fields"):
        if extra.get("stream"):
            got = stream(lenient_server, endpoint, {**extra})
            want = stream(tiny_server, endpoint, {**extra, "stream_options": {"include_usage": True}})
            assert comparable(got) == comparable(want)
        else:
            assert outcome(ok(lenient_server, endpoint, extra)) == outcome(ok(tiny_server, endpoint, {}))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("present in the request but ignored" in w and param in w for w in warnings), warnings


def test_accept_unknown_fields_still_refuses_and_checks_the_table(lenient_server):
    refused(post(lenient_server, "chat", {"tools": [{"type": "function", "function": {"name": "f"}}],
                                           "tool_choice": "auto"}), "tool_choice")
    refused(post(lenient_server, "chat", {"audio": {"voice": "alloy"}}), "audio")
    refused(post(lenient_server, "chat", {"max_tokens": "many"}), "max_tokens")  # types are still checked


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_null_for_every_field_means_not_sent(tiny_server, endpoint):
    """Some clients send every field they know, the unset ones as null."""
    keep = {"model", "messages", "prompt", "temperature", "max_tokens"}  # the base request's own
    nulls = {name: None for name, rule in rules().items() if "." not in name and name not in keep
             and rule.status(endpoint) is not None}
    assert len(nulls) > 40
    assert outcome(ok(tiny_server, endpoint, nulls)) == outcome(ok(tiny_server, endpoint, {}))
