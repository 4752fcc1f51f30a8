"""Per-request caps: each refused with a 400 (InvalidParameter) naming the field and the limit."""

from __future__ import annotations

import pytest

from npu_serve.errors import InvalidParameter
from npu_serve.server.caps import RequestCaps, check_caps
from npu_serve.server.protocol import ChatCompletionRequest, CompletionRequest

CAPS = RequestCaps(max_n=4, max_stop_strings=3, max_stop_string_chars=10, max_stop_token_ids=5, max_messages=6,
                   max_logit_bias_entries=7, max_logprobs=5)
MSG = {"role": "user", "content": "hi"}


def chat(**kw):
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [MSG], **kw})


def completion(**kw):
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi", **kw})


@pytest.mark.parametrize("make", [chat, completion])
@pytest.mark.parametrize("fields,param", [
    ({"n": 5}, "n"),
    ({"best_of": 5}, "best_of"),
    ({"stop": ["a", "b", "c", "d"]}, "stop"),
    ({"stop": "x" * 11}, "stop"),
    ({"stop": ["ok", "y" * 11]}, "stop"),
    ({"stop_token_ids": list(range(6))}, "stop_token_ids"),
    ({"logit_bias": {str(i): 1.0 for i in range(8)}}, "logit_bias"),
    ({"prompt_logprobs": 6}, "prompt_logprobs"),
])
def test_each_cap_names_its_field(make, fields, param):
    with pytest.raises(InvalidParameter) as e:
        check_caps(make(**fields), CAPS)
    assert e.value.param == param and "at most" in e.value.message and param in e.value.message


def test_endpoint_specific_caps():
    with pytest.raises(InvalidParameter) as e:
        check_caps(chat(messages=[MSG] * 7), CAPS)
    assert e.value.param == "messages"
    with pytest.raises(InvalidParameter) as e:
        check_caps(chat(logprobs=True, top_logprobs=6), CAPS)
    assert e.value.param == "top_logprobs"
    with pytest.raises(InvalidParameter) as e:
        check_caps(completion(logprobs=6), CAPS)
    assert e.value.param == "logprobs"


def test_at_the_limit_is_fine():
    check_caps(chat(n=4, best_of=4, stop=["a", "b", "x" * 10], stop_token_ids=list(range(5)), messages=[MSG] * 6,
                    logit_bias={str(i): 1.0 for i in range(7)}, logprobs=True, top_logprobs=5, prompt_logprobs=5), CAPS)
    check_caps(completion(logprobs=5, stop="x" * 10), CAPS)


def test_caps_must_be_positive():
    with pytest.raises(ValueError):
        RequestCaps(max_n=0)
