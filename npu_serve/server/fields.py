"""The request-field policy of docs/api-fields.md, applied to a raw JSON body before pydantic.

Each top-level field (and each `stream_options` key) is implemented, ignored or refused per
endpoint; the rows live in `field_table.py`, generated from the doc's table, which is the one
place they are decided. `screen` turns a body into what the pydantic request models validate:

- implemented fields pass through untouched (the models type-check them), except null, which
  means "not sent" (OpenAI's nullable fields; some clients send every field, unset ones as null);
- ignored fields are dropped, with a debug log line;
- refused fields answer 400 naming the field, unless the value is null or the row's no-op value;
- unknown fields pass through to the models, which forbid them (400 `extra_forbidden`, the 909
  contract), or, with `accept_unknown`, are dropped with a warning, as current vLLM does.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

from npu_serve.errors import InvalidParameter

logger = logging.getLogger(__name__)

ENDPOINTS = ("chat", "completions")
NESTED = ("stream_options",)  # objects whose keys have rows of their own ("stream_options.include_usage")


class Status(str, Enum):
    IMPLEMENTED = "implemented"
    IGNORED = "ignored"
    REFUSED = "refused"


@dataclass(frozen=True)
class FieldRule:
    """One row of the table. `chat`/`completions` None: not a field of that endpoint. `noop` is
    the JSON text of the one value (besides null) a refused field accepts as "not asked for"."""

    name: str
    chat: Status | None
    completions: Status | None
    noop: str | None
    why: str

    def status(self, endpoint: str) -> Status | None:
        return getattr(self, endpoint)

    def is_noop(self, value: Any) -> bool:
        return value is None or (self.noop is not None and value == json.loads(self.noop))


@functools.cache
def rules() -> dict[str, FieldRule]:
    from npu_serve.server.field_table import FIELD_RULES

    return {r.name: r for r in FIELD_RULES}


def names_with(endpoint: str, status: Status, prefix: str = "") -> set[str]:
    """Field names of `endpoint` with `status`: top-level ones, or the keys of `prefix` (e.g.
    "stream_options") without the prefix."""
    out = set()
    for name, rule in rules().items():
        if rule.status(endpoint) is not status:
            continue
        head, dot, key = name.partition(".")
        if prefix and dot and head == prefix:
            out.add(key)
        elif not prefix and not dot:
            out.add(name)
    return out


def screen(data: dict[str, Any], endpoint: str, accept_unknown: bool = False) -> dict[str, Any]:
    """Apply the table to one request body (not modified; a screened copy is returned)."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}")
    table = rules()
    out = _screen_level(data, endpoint, accept_unknown, table, "")
    for key in NESTED:
        if isinstance(out.get(key), dict):
            out[key] = _screen_level(out[key], endpoint, accept_unknown, table, key + ".")
    return out


def _screen_level(data: dict[str, Any], endpoint: str, accept_unknown: bool, table: dict[str, FieldRule],
                  prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ignored, unknown = [], []
    for key, value in data.items():
        name = prefix + key
        rule = table.get(name)
        status = rule.status(endpoint) if rule is not None else None
        if status is Status.IMPLEMENTED:
            if value is not None:
                out[key] = value
        elif status is Status.IGNORED:
            ignored.append(name)
        elif status is Status.REFUSED:
            if not rule.is_noop(value):
                raise InvalidParameter(name, f"`{name}` is not supported by this server: {rule.why}.")
            ignored.append(name)
        elif accept_unknown:
            unknown.append(name)
        else:
            out[key] = value  # the request model forbids it: 400 extra_forbidden naming it
    if ignored:
        logger.debug("ignored request fields (no effect on the output): %s", ", ".join(ignored))
    if unknown:
        logger.warning("The following fields were present in the request but ignored: %s", ", ".join(unknown))
    return out
