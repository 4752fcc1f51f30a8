"""/openapi.json: every route of the app, what the field table lets through, the caps, the error shapes."""

from __future__ import annotations

import json

import pytest
import schemathesis

from npu_serve.server.app import build_app
from npu_serve.server.caps import RequestCaps
from npu_serve.server.config import ServerConfig
from npu_serve.server.errors import error_body
from npu_serve.server.fields import Status, rules
from npu_serve.server.moderation import MODERATION_ERROR_BODY
from npu_serve.server.openapi import openapi_document
from npu_serve.server.protocol import ChatCompletionRequest, CompletionRequest, ErrorResponse, ModerationErrorResponse


def test_every_route_of_the_app_is_documented_with_its_methods():
    app = build_app(lambda: None, ServerConfig(api_keys=("k",), warmup=False))
    doc = app.state.openapi
    routes = {(r.path, m.lower()) for r in app.routes for m in r.methods if m != "HEAD"}
    documented = {(p, m) for p, item in doc["paths"].items() for m in item}
    assert routes == documented
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_the_document_loads_as_openapi_and_every_operation_answers_its_errors():
    doc = openapi_document(ServerConfig(api_keys=("k",)))
    schema = schemathesis.openapi.from_dict(doc)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) == sum(len(item) for item in doc["paths"].values())
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path.startswith("/v1"):
                assert {"401", "404", "413", "503"} <= set(op["responses"]), (method, path)
                if not path.endswith("/metrics"):  # the playground's prefixed /metrics takes no input
                    assert "400" in op["responses"], (method, path)
                assert "Retry-After" in op["responses"]["503"]["headers"]
                assert op["security"] == [{"bearer": []}]
            if method == "post":
                assert op["responses"]["403"]["content"]["application/json"]["schema"]["$ref"].endswith(
                    "/ModerationErrorResponse")
                assert set(op["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}


@pytest.mark.parametrize("model,endpoint", [(ChatCompletionRequest, "chat"), (CompletionRequest, "completions")])
def test_request_schema_follows_the_field_table(model, endpoint):
    schemas = openapi_document(ServerConfig())["components"]["schemas"]
    req = schemas[model.__name__]
    props = req["properties"]
    assert req["additionalProperties"] is False
    for name, rule in rules().items():
        if "." in name:
            continue
        status = rule.status(endpoint)
        if status is None:
            assert name not in props, name  # another endpoint's field: a 400 here
        elif status is Status.IMPLEMENTED:
            assert name in model.model_fields
            if name not in req.get("required", []):  # null means "not sent"
                assert any(b.get("type") == "null" for b in props[name].get("anyOf", [])), name
        elif status is Status.IGNORED:
            assert props[name]["description"].startswith("Accepted and ignored"), name
        else:
            assert props[name]["enum"][0] is None and props[name]["description"].startswith("Refused"), name
            if rule.noop is not None:
                assert props[name]["enum"][1] == json.loads(rule.noop)
    assert set(req["required"]) == {"model", "messages" if endpoint == "chat" else "prompt"}
    opts = schemas[f"{model.__name__}StreamOptions"]["properties"]
    assert opts["include_obfuscation"]["description"].startswith("Accepted and ignored")
    unknown_ok = openapi_document(ServerConfig(accept_unknown_fields=True))["components"]["schemas"][model.__name__]
    assert unknown_ok["additionalProperties"] is True


def test_caps_appear_in_the_schema():
    caps = RequestCaps(max_n=3, max_stop_strings=2, max_stop_string_chars=9, max_messages=5, max_logit_bias_entries=4,
                       max_logprobs=6, max_stop_token_ids=7)
    schemas = openapi_document(ServerConfig(caps=caps))["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["n"]["anyOf"][0]["maximum"] == 3 and chat["best_of"]["anyOf"][0]["maximum"] == 3
    string, array = chat["stop"]["anyOf"][:2]
    assert string["maxLength"] == 9 and array["maxItems"] == 2 and array["items"]["maxLength"] == 9
    assert chat["messages"]["maxItems"] == 5 and chat["logit_bias"]["anyOf"][0]["maxProperties"] == 4
    assert chat["top_logprobs"]["anyOf"][0]["maximum"] == 6 and chat["stop_token_ids"]["anyOf"][0]["maxItems"] == 7
    assert schemas["CompletionRequest"]["properties"]["logprobs"]["anyOf"][0]["maximum"] == 6


def test_error_bodies_match_their_documented_models():
    for status in (400, 401, 404, 413, 503):
        ErrorResponse.model_validate(error_body(status, "m", "p"))
    ModerationErrorResponse.model_validate(MODERATION_ERROR_BODY)


def test_a_stream_event_matches_the_documented_event_schema():
    """SSE-aware checkers (schemathesis) validate each event, as {"data": ..., "event": ...}, against the
    text/event-stream schema; the fuzz test failed on the first valid stream while it said "string"."""
    import jsonschema_rs

    doc = openapi_document(ServerConfig())
    for path in ("/v1/chat/completions", "/v1/completions"):
        schema = doc["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
        validator = jsonschema_rs.validator_for(schema)
        assert validator.is_valid({"data": '{"id": "x", "choices": []}', "event": "message"})
        assert validator.is_valid({"data": "[DONE]"})
        assert not validator.is_valid({"event": "message"})
