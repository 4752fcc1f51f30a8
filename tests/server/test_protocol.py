"""Request validation and the mapping to SamplingParams (no engine, no HTTP)."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import Request

from npu_serve.errors import InvalidParameter, PromptTooLong
from npu_serve.server import params as P
from npu_serve.server.config import ServerConfig
from npu_serve.server.errors import APIError
from npu_serve.server.protocol import ChatCompletionRequest, CompletionRequest
from npu_serve.server.serving import parse_body

MSG = [{"role": "user", "content": "hi"}]


def _request(body: bytes) -> Request:
    """A real Starlette request whose ASGI receive channel delivers `body`."""

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


def _parse(model, body) -> object:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return asyncio.run(parse_body(_request(raw), model))


def test_unknown_field_is_refused_naming_it():
    with pytest.raises(APIError) as e:
        _parse(ChatCompletionRequest, {"model": "m", "messages": MSG, "temprature": 0.5})
    assert e.value.status == 400 and e.value.param == "temprature"
    assert "extra_forbidden" in e.value.message and "temprature" in e.value.message


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"\xff\xfe"])
def test_malformed_json_is_400(raw):
    with pytest.raises(APIError) as e:
        _parse(ChatCompletionRequest, raw)
    assert e.value.status == 400


def test_wrong_type_names_the_field():
    with pytest.raises(APIError) as e:
        _parse(CompletionRequest, {"model": "m", "prompt": "x", "max_tokens": "many"})
    assert e.value.param == "max_tokens"


def test_missing_messages_and_bad_role():
    with pytest.raises(APIError) as e:
        _parse(ChatCompletionRequest, {"model": "m"})
    assert e.value.param == "messages"
    with pytest.raises(APIError) as e:
        _parse(ChatCompletionRequest, {"model": "m", "messages": [{"role": "wizard", "content": "x"}]})
    assert e.value.param.startswith("messages.0.role")


def test_message_extras_are_ignored():
    req = _parse(ChatCompletionRequest, {"model": "m", "messages": [
        {"role": "assistant", "content": "a", "reasoning_content": "r", "tool_calls": []}]})
    assert req.messages[0].content == "a"


def test_stream_options_need_stream():
    req = _parse(ChatCompletionRequest, {"model": "m", "messages": MSG, "stream_options": {"include_usage": True}})
    with pytest.raises(InvalidParameter) as e:
        P.check_request(req)
    assert e.value.param == "stream_options"


def test_top_logprobs_need_logprobs():
    req = _parse(ChatCompletionRequest, {"model": "m", "messages": MSG, "top_logprobs": 2})
    with pytest.raises(InvalidParameter) as e:
        P.check_request(req)
    assert e.value.param == "top_logprobs"


def test_maas_defaults():
    cfg = ServerConfig()
    chat = _parse(ChatCompletionRequest, {"model": "m", "messages": MSG})
    sp = P.sampling_params(chat, cfg, P.resolve_max_tokens(chat.max_tokens, cfg.default_chat_max_tokens, 10, 100,
                                                           "messages"), vocab_size=1000)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.n) == (0.6, 1.0, -1, 90, 1)
    comp = _parse(CompletionRequest, {"model": "m", "prompt": "x"})
    assert P.resolve_max_tokens(comp.max_tokens, cfg.default_completion_max_tokens, 10, 100, "prompt") == 16


@pytest.mark.parametrize("field,value,param", [
    ("n", 2, "n"),  # n > 1 with greedy (temperature 0)
    ("top_p", 0.0, "top_p"),
    ("top_k", 0, "top_k"),
    ("presence_penalty", 2.5, "presence_penalty"),
    ("frequency_penalty", -3, "frequency_penalty"),
    ("length_penalty", 0.5, "length_penalty"),
    ("temperature", -1, "temperature"),
    ("max_tokens", 0, "max_tokens"),
])
def test_refusals_name_the_parameter(field, value, param):
    body = {"model": "m", "messages": MSG, "temperature": 0, field: value}
    req = _parse(ChatCompletionRequest, body)
    max_tokens = P.resolve_max_tokens(req.max_tokens, None, 5, 100, "messages")
    with pytest.raises(InvalidParameter) as e:
        P.sampling_params(req, ServerConfig(), max_tokens, vocab_size=1000)
    assert e.value.param == param and param in e.value.message


def test_beam_search_rules():
    req = _parse(ChatCompletionRequest, {"model": "m", "messages": MSG, "use_beam_search": True, "n": 1,
                                         "temperature": 0})
    with pytest.raises(InvalidParameter) as e:
        P.sampling_params(req, ServerConfig(), 5, 1000)
    assert e.value.param == "n"


def test_logit_bias_out_of_vocab():
    req = _parse(CompletionRequest, {"model": "m", "prompt": "x", "logit_bias": {"5000": 10}})
    with pytest.raises(InvalidParameter) as e:
        P.sampling_params(req, ServerConfig(), 5, vocab_size=1000)
    assert e.value.param == "logit_bias"
    req = _parse(CompletionRequest, {"model": "m", "prompt": "x", "logit_bias": {"5": 1000}})
    assert P.sampling_params(req, ServerConfig(), 5, vocab_size=1000).logit_bias == {5: 100.0}


def test_context_check_message():
    with pytest.raises(PromptTooLong) as e:
        P.resolve_max_tokens(50, None, 60, 100, "messages")
    assert e.value.message == (
        "This model's maximum context length is 100 tokens. However, you requested 110 tokens "
        "(60 in the messages, 50 in the completion). Please reduce the length of the messages or completion.")
    with pytest.raises(PromptTooLong):
        P.resolve_max_tokens(None, None, 100, 100, "messages")
    assert P.resolve_max_tokens(40, None, 60, 100, "messages") == 40


def _chat(**extra) -> ChatCompletionRequest:
    return _parse(ChatCompletionRequest, {"model": "m", "messages": MSG, **extra})


def test_max_completion_tokens_is_chat_output_cap():
    assert P.chat_max_tokens(_chat(max_completion_tokens=7)) == 7
    assert P.chat_max_tokens(_chat(max_tokens=5)) == 5
    assert P.chat_max_tokens(_chat(max_tokens=7, max_completion_tokens=7)) == 7
    assert P.chat_max_tokens(_chat()) is None


def test_max_completion_tokens_disagreeing_with_max_tokens_names_both():
    with pytest.raises(InvalidParameter) as e:
        P.check_request(_chat(max_tokens=5, max_completion_tokens=7))
    assert e.value.param == "max_completion_tokens"
    assert "`max_completion_tokens` (7)" in e.value.message and "`max_tokens` (5)" in e.value.message
    with pytest.raises(InvalidParameter) as e:
        P.check_request(_chat(max_completion_tokens=0))
    assert e.value.param == "max_completion_tokens"


def test_max_completion_tokens_is_not_a_completions_field():
    with pytest.raises(APIError) as e:
        _parse(CompletionRequest, {"model": "m", "prompt": "x", "max_completion_tokens": 3})
    assert e.value.param == "max_completion_tokens" and "extra_forbidden" in e.value.message


@pytest.mark.parametrize("extra,param", [
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),  # OpenAI's default is "auto"
    ({"continue_final_message": True}, "continue_final_message"),  # add_generation_prompt defaults to true
])
def test_chat_rules_name_the_field(extra, param):
    with pytest.raises(InvalidParameter) as e:
        P.check_request(_chat(**extra))
    assert e.value.param == param


def test_add_special_tokens_reaches_the_tokenizer(tokenizer_dir):
    """Our tiny models' tokenizer adds no BOS, so a live server cannot show the field's effect; a
    copy of that real tokenizer with a BOS post-processor can, through the handlers' own prompt
    builders."""
    from types import SimpleNamespace

    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from npu_serve.server import chat, completions

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A",
                                                              special_tokens=[("<|im_start|>", 1)])
    state = SimpleNamespace(engine=SimpleNamespace(tokenizer=tok), config=ServerConfig())
    plain = completions.build_prompt(state, _parse(CompletionRequest, {"model": "m", "prompt": "hi",
                                                                       "add_special_tokens": False}))[1]
    assert completions.build_prompt(state, _parse(CompletionRequest, {"model": "m", "prompt": "hi"}))[1] == [1] + plain
    chat_plain = chat.build_prompt(state, _chat())[1]  # chat's default is false: the template adds its own
    assert chat.build_prompt(state, _chat(add_special_tokens=True))[1] == [1] + chat_plain
