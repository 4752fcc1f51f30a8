"""docs/api-fields.md is the one source of the request-field policy: the generated module, the
pydantic request models and the installed openai SDK must agree with it, and `screen` must do
what each status says."""

from __future__ import annotations

import logging

import pytest

from npu_serve.errors import InvalidParameter
from npu_serve.server import fieldgen
from npu_serve.server.fields import Status, names_with, rules, screen
from npu_serve.server.protocol import ChatCompletionRequest, CompletionRequest, StreamOptions

MODELS = {"chat": ChatCompletionRequest, "completions": CompletionRequest}

# vLLM's request fields at commit d5dba2d7 (vllm/entrypoints/openai/{chat_completion,completion}/
# protocol.py), the version docs/api-fields.md was sorted against. vLLM is not installed here, so
# they are written down; the openai SDK's are read from the installed package below.
VLLM_CHAT = """messages model frequency_penalty logit_bias logprobs top_logprobs max_tokens max_completion_tokens n
presence_penalty response_format seed stop stream stream_options temperature top_p tools tool_choice reasoning_effort
include_reasoning parallel_tool_calls user use_beam_search top_k min_p repetition_penalty length_penalty stop_token_ids
include_stop_str_in_output ignore_eos min_tokens skip_special_tokens spaces_between_special_tokens
truncate_prompt_tokens prompt_logprobs allowed_token_ids bad_words echo add_generation_prompt continue_final_message
add_special_tokens documents chat_template chat_template_kwargs mm_processor_kwargs structured_outputs priority
request_id logits_processors return_tokens_as_token_ids return_token_ids cache_salt kv_transfer_params vllm_xargs
max_repetition_pattern_size min_repetition_pattern_size repetition_min_count""".split()
VLLM_COMPLETIONS = """model prompt echo frequency_penalty logit_bias logprobs max_tokens n presence_penalty seed stop
stream stream_options suffix temperature top_p user use_beam_search top_k min_p repetition_penalty length_penalty
stop_token_ids include_stop_str_in_output ignore_eos min_tokens skip_special_tokens spaces_between_special_tokens
truncate_prompt_tokens allowed_token_ids prompt_logprobs prompt_embeds add_special_tokens response_format
structured_outputs priority request_id logits_processors return_tokens_as_token_ids return_token_ids cache_salt
kv_transfer_params vllm_xargs max_repetition_pattern_size min_repetition_pattern_size repetition_min_count""".split()
VLLM_STREAM_OPTIONS = ["include_usage", "continuous_usage_stats"]


def test_generated_module_is_up_to_date():
    assert fieldgen.MODULE.read_text(encoding="utf-8") == fieldgen.generated(), (
        "docs/api-fields.md changed: run python -m npu_serve.server.fieldgen")
    assert fieldgen.main(["--check"]) == 0


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_request_models_hold_exactly_the_implemented_fields(endpoint):
    assert set(MODELS[endpoint].model_fields) == names_with(endpoint, Status.IMPLEMENTED)
    assert set(StreamOptions.model_fields) == names_with(endpoint, Status.IMPLEMENTED, prefix="stream_options")


def _sdk_keys(*typed_dicts) -> set[str]:
    return set().union(*(td.__required_keys__ | td.__optional_keys__ for td in typed_dicts))


def test_every_openai_sdk_field_has_a_row():
    from openai.types import completion_create_params as comp
    from openai.types.chat import completion_create_params as chat
    from openai.types.chat.chat_completion_stream_options_param import ChatCompletionStreamOptionsParam

    table = rules()
    expected = {
        "chat": _sdk_keys(chat.CompletionCreateParamsStreaming, chat.CompletionCreateParamsNonStreaming),
        "completions": _sdk_keys(comp.CompletionCreateParamsStreaming, comp.CompletionCreateParamsNonStreaming),
    }
    stream_keys = {"stream_options." + k for k in _sdk_keys(ChatCompletionStreamOptionsParam)}
    for endpoint, keys in expected.items():
        missing = sorted(k for k in keys | stream_keys if k not in table or table[k].status(endpoint) is None)
        assert not missing, f"openai SDK {endpoint} fields with no row in docs/api-fields.md: {missing}"


def test_every_vllm_field_has_a_row():
    table = rules()
    for endpoint, keys in (("chat", VLLM_CHAT), ("completions", VLLM_COMPLETIONS)):
        keys = keys + ["stream_options." + k for k in VLLM_STREAM_OPTIONS]
        missing = sorted(k for k in keys if k not in table or table[k].status(endpoint) is None)
        assert not missing, f"vLLM {endpoint} fields with no row in docs/api-fields.md: {missing}"


def test_only_refused_rows_have_a_noop_value_and_every_why_is_written():
    for rule in rules().values():
        assert rule.why, rule.name
        if rule.noop is not None:
            assert Status.REFUSED in (rule.chat, rule.completions), rule.name


HEADER = "| field | chat | completions | no-op | from | what we do, and why |\n|---|---|---|---|---|---|\n"


def _doc(*rows: str) -> str:
    return "intro\n<!-- fields:begin -->\n" + HEADER + "\n".join(rows) + "\n<!-- fields:end -->\n"


def test_parser_reads_rows():
    rows = fieldgen.parse(_doc("| `a` | implemented | - | | O | x |", "| `b.c` | refused | ignored | `[\"t\"]` | V | y |"))
    assert [(r.name, r.chat, r.completions, r.noop, r.why) for r in rows] == [
        ("a", Status.IMPLEMENTED, None, None, "x"), ("b.c", Status.REFUSED, Status.IGNORED, '["t"]', "y")]


@pytest.mark.parametrize("row,complaint", [
    ("| `a` | implemented | - | | O |", "cells"),
    ("| a | implemented | - | | O | x |", "backticks"),
    ("| `a` | maybe | - | | O | x |", "not one of"),
    ("| `a` | - | - | | O | x |", "no endpoint"),
    ("| `a` | ignored | - | `0` | O | x |", "only a refused"),
    ("| `a` | refused | - | `{nope` | O | x |", "not JSON"),
    ("| `a` | refused | - | 0 | O | x |", "backticks"),
])
def test_parser_refuses_malformed_rows(row, complaint):
    with pytest.raises(ValueError, match=complaint):
        fieldgen.parse(_doc(row))


def test_parser_refuses_a_field_twice_and_a_missing_table():
    with pytest.raises(ValueError, match="markers"):
        fieldgen.parse("no table here")
    with pytest.raises(ValueError, match="two rows"):
        fieldgen.parse(_doc("| `a` | implemented | - | | O | x |", "| `a` | ignored | - | | O | x |"))


def test_screen_drops_ignored_fields_with_a_debug_line(caplog):
    with caplog.at_level(logging.DEBUG, logger="npu_serve.server.fields"):
        out = screen({"model": "m", "user": "u", "store": True, "stream_options": {"include_obfuscation": True}},
                     "chat")
    assert out == {"model": "m", "stream_options": {}}
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("user" in r.getMessage() and "store" in r.getMessage() for r in debug)
    assert any("stream_options.include_obfuscation" in r.getMessage() for r in debug)


def test_screen_refuses_naming_the_field_unless_null_or_noop():
    with pytest.raises(InvalidParameter) as e:
        screen({"model": "m", "modalities": ["text", "audio"]}, "chat")
    assert e.value.param == "modalities" and "`modalities`" in e.value.message
    assert screen({"model": "m", "modalities": ["text"], "audio": None}, "chat") == {"model": "m"}
    with pytest.raises(InvalidParameter) as e:
        screen({"prompt": "x", "suffix": "y"}, "completions")
    assert e.value.param == "suffix"


def test_screen_unknown_fields(caplog):
    body = {"model": "m", "temprature": 1, "max_completion_tokens": 3}  # the latter is chat-only
    assert screen(body, "completions") == body  # left for the model to forbid (extra_forbidden)
    with caplog.at_level(logging.WARNING, logger="npu_serve.server.fields"):
        assert screen(body, "completions", accept_unknown=True) == {"model": "m"}
    assert "temprature, max_completion_tokens" in caplog.text
    assert screen({"stream_options": {"nope": 1}}, "chat", accept_unknown=True) == {"stream_options": {}}
    assert body == {"model": "m", "temprature": 1, "max_completion_tokens": 3}  # the input is not modified


def test_screen_treats_null_as_not_sent():
    body = {"model": "m", "n": None, "stop": None, "user": None, "audio": None, "stream_options": {"include_usage": None}}
    assert screen(body, "chat") == {"model": "m", "stream_options": {}}
    assert screen({"nope": None}, "chat") == {"nope": None}  # unknown stays unknown, null or not
