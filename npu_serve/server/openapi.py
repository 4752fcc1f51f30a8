"""GET /openapi.json: the contract as an OpenAPI 3.1 document, built once per app from the pydantic
models (protocol.py) and the server's configuration.

The request schemas describe what the server really accepts, which is more than the pydantic
models alone say, because `fields.screen` runs first (docs/api-fields.md):
- every optional field may also be null ("not sent"; some clients send every field);
- ignored fields are accepted with any value (described as ignored);
- refused fields are accepted only as null or their no-op value (anything else is a 400);
- any other field is a 400 (`additionalProperties: false`), unless --accept-unknown-fields;
- the per-request caps (caps.py) appear as maximum / maxItems / maxLength / maxProperties.
Every route is listed at the root and under MaaS's `/v1/infers/{service_id}` prefix, with every
status it answers and the body of each: the flat error body everywhere, MaaS's own body for
moderation's 403, Retry-After on 503.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic.json_schema import models_json_schema

from npu_serve.server.config import ServerConfig
from npu_serve.server.fields import Status, rules
from npu_serve.server.protocol import (
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, CompletionChunk, CompletionRequest,
    CompletionResponse, ErrorResponse, HealthStatus, ModelList, ModerationErrorResponse, VersionInfo,
)

REF = "#/components/schemas/{model}"
MAAS_PREFIX = "/v1/infers/{service_id}"
# One event of a stream (SSE-aware tools such as schemathesis check each event against the schema):
# its `data` is a JSON chunk or `[DONE]`. {"type": "string"} here failed every event of a valid stream.
_SSE_EVENT = {"type": "object", "required": ["data"],
              "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}
_SERVICE_ID = {"name": "service_id", "in": "path", "required": True,
               "description": "The MaaS service id (any value; not checked).",
               "schema": {"type": "string", "pattern": "^[^/]+$"}}
_MODELS = [(ChatCompletionRequest, "validation"), (CompletionRequest, "validation"),
           (ChatCompletionResponse, "serialization"), (CompletionResponse, "serialization"),
           (ChatCompletionChunk, "serialization"), (CompletionChunk, "serialization"),
           (ModelList, "serialization"), (ErrorResponse, "serialization"),
           (ModerationErrorResponse, "serialization"), (HealthStatus, "serialization"),
           (VersionInfo, "serialization")]


def openapi_document(config: ServerConfig) -> dict[str, Any]:
    from npu_serve.server.metrics import package_version

    _, top = models_json_schema(_MODELS, ref_template=REF)
    schemas = top["$defs"]
    for model, endpoint in ((ChatCompletionRequest, "chat"), (CompletionRequest, "completions")):
        name = f"{model.__name__}StreamOptions"
        schemas[name] = _screened(copy.deepcopy(schemas["StreamOptions"]), endpoint, config, "stream_options.")
        req = _screened(schemas[model.__name__], endpoint, config, "")
        req["properties"]["stream_options"] = _nullable({"$ref": REF.format(model=name)})
        _caps(req["properties"], config, endpoint)
    del schemas["StreamOptions"]
    keyed = bool(config.keys_db or config.api_keys)
    paths: dict[str, Any] = {
        "/health": {"get": _op("Readiness: 200 once the model is loaded and warmed up; 503 while loading, draining "
                               "or after the engine stopped.", {"200": {"description": "Ready (no body)."},
                                                                 "503": _json("Not ready.", "HealthStatus", retry=False)})},
        "/version": {"get": _op("The package version and, once loaded, the engine's static facts.",
                                {"200": _json("Version and engine facts.", "VersionInfo")})},
        "/metrics": {"get": _op("Prometheus metrics (docs/metrics.md).", {
            "200": {"description": "Prometheus text exposition.", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **({"401": _error("Missing or invalid API key.")} if keyed and config.metrics_require_key else {})},
            secured=keyed and config.metrics_require_key)},
        "/openapi.json": {"get": _op("This document.", {"200": {"description": "OpenAPI 3.1.", "content": {
            "application/json": {"schema": {"type": "object"}}}}})},
    }
    # The playground's dashboard reads /metrics relative to its page; under the prefix, like all of /v1, behind the key.
    paths[MAAS_PREFIX + "/metrics"] = {"get": _op("Prometheus metrics, as /metrics (for the playground under the "
                                                  "prefix).", {
        "200": paths["/metrics"]["get"]["responses"]["200"],
        **({"401": _error("Missing or invalid API key.")} if keyed else {}),
        "404": _error("Unknown path (a service id with a slash in it)."),
        "413": _error("Body over --max-request-body-bytes."),
        "503": _error("Draining.", retry=True)}, secured=keyed)}
    paths[MAAS_PREFIX + "/metrics"]["get"]["parameters"] = [_SERVICE_ID]
    api = {
        "/v1/models": {"get": _op("The served model.", {"200": _json("The one served model.", "ModelList"),
                                                          **_api_errors(keyed, generation=False)}, secured=keyed)},
        "/v1/chat/completions": {"post": _generation("ChatCompletion", "Chat completion (MaaS / vLLM 0.6.0).", keyed)},
        "/v1/completions": {"post": _generation("Completion", "Text completion (MaaS / vLLM 0.6.0).", keyed)},
    }
    for path, item in api.items():
        paths[path] = item
        for method, op in item.items():
            op["operationId"] = _operation_id(method, path)
        prefixed = copy.deepcopy(item)
        for op in prefixed.values():
            op["operationId"] += "_maas"
            op["parameters"] = [_SERVICE_ID]
        paths[MAAS_PREFIX + path] = prefixed
    for path, item in paths.items():
        for method, op in item.items():
            op.setdefault("operationId", _operation_id(method, path))
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "npu-serve", "version": package_version(),
                 "description": "The ModelArts Studio (MaaS) / vLLM 0.6.0 OpenAI-compatible API of npu-serve."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if keyed:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def _operation_id(method: str, path: str) -> str:
    return method + path.replace("/", "_").replace(".", "_")


def _screened(schema: dict[str, Any], endpoint: str, config: ServerConfig, prefix: str) -> dict[str, Any]:
    """Apply the field table's view (module docstring) to one object schema."""
    props = schema.setdefault("properties", {})
    required = set(schema.get("required", []))
    for name in list(props):
        if name not in required:
            props[name] = _nullable(props[name])
    for full, rule in rules().items():
        if not full.startswith(prefix) or "." in full[len(prefix):]:
            continue
        name, status = full[len(prefix):], rule.status(endpoint)
        if status is Status.IGNORED:
            props[name] = {"description": f"Accepted and ignored: {rule.why}."}
        elif status is Status.REFUSED:
            allowed = "null" + (f" or {rule.noop}" if rule.noop is not None else "")
            values = [None] + ([json.loads(rule.noop)] if rule.noop is not None else [])
            props[name] = {"description": f"Refused with a 400 unless {allowed}: {rule.why}.", "enum": values}
    schema["additionalProperties"] = bool(config.accept_unknown_fields)
    return schema


def _nullable(prop: dict[str, Any]) -> dict[str, Any]:
    branches = prop.get("anyOf")
    if branches is not None:
        if not any(b.get("type") == "null" for b in branches):
            branches.append({"type": "null"})
        return prop
    if prop.get("type") == "null":
        return prop
    meta = {k: prop.pop(k) for k in ("title", "default", "description") if k in prop}
    return {"anyOf": [prop, {"type": "null"}], **meta}


def _branches(prop: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [b for b in prop.get("anyOf", [prop]) if b.get("type") == kind]


def _caps(props: dict[str, Any], config: ServerConfig, endpoint: str) -> None:
    caps = config.caps
    for name in ("n", "best_of"):
        for b in _branches(props[name], "integer"):
            b.update(minimum=1, maximum=caps.max_n)
    for b in _branches(props["stop"], "string"):
        b["maxLength"] = caps.max_stop_string_chars
    for b in _branches(props["stop"], "array"):
        b.update(maxItems=caps.max_stop_strings)
        b["items"]["maxLength"] = caps.max_stop_string_chars
    for b in _branches(props["stop_token_ids"], "array"):
        b["maxItems"] = caps.max_stop_token_ids
    for b in _branches(props["logit_bias"], "object"):
        b["maxProperties"] = caps.max_logit_bias_entries
    for name in (("top_logprobs",) if endpoint == "chat" else ("logprobs",)) + ("prompt_logprobs",):
        for b in _branches(props[name], "integer"):
            b.update(minimum=0, maximum=caps.max_logprobs)
    if endpoint == "chat":
        for b in _branches(props["messages"], "array"):
            b["maxItems"] = caps.max_messages


def _op(summary: str, responses: dict[str, Any], secured: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if secured:
        op["security"] = [{"bearer": []}]
    return op


def _json(description: str, model: str, retry: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}
    if retry:
        out["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                          "schema": {"type": "string"}}}
    return out


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    return _json(description, "ErrorResponse", retry)


def _api_errors(keyed: bool, generation: bool) -> dict[str, Any]:
    out = {"400": _error("Invalid request: the message names the problem, `param` the field."),
           "404": _error("Unknown model or path."),
           "405": _error("Method not allowed."),
           "413": _error("Body over --max-request-body-bytes."),
           "500": _error("The engine failed this request."),
           "503": _error("Overloaded (waiting-request or waiting-token limit), draining, loading, or the engine "
                         "stopped.", retry=True)}
    if keyed:
        out["401"] = _error("Missing or invalid API key.")
    if generation:
        out["403"] = _json("Refused by content moderation (MaaS's own body).", "ModerationErrorResponse")
    return out


def _generation(model: str, summary: str, keyed: bool) -> dict[str, Any]:
    chunk = f"{model}Chunk"
    op = _op(summary, {
        "200": {"description": f"A {model}Response; with `stream: true` a text/event-stream of `data: <{chunk}>` "
                               "events ending with `data: [DONE]` (errors after the stream began come in-band).",
                "content": {"application/json": {"schema": {"$ref": REF.format(model=f"{model}Response")}},
                            "text/event-stream": {"schema": _SSE_EVENT}}},
        **_api_errors(keyed, generation=True)}, secured=keyed)
    op["requestBody"] = {"required": True, "content": {"application/json": {
        "schema": {"$ref": REF.format(model=f"{model}Request")}}}}
    return op
