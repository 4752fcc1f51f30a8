"""Helpers for the operations tests: scrape /metrics, and scripts/rawhttp.py (soak.py's raw client)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

RAWHTTP = Path(__file__).resolve().parents[2] / "scripts" / "rawhttp.py"


def rawhttp():
    """scripts/rawhttp.py as a module (scripts/ is not a package)."""
    if "npu_serve_rawhttp" not in sys.modules:
        spec = importlib.util.spec_from_file_location("npu_serve_rawhttp", RAWHTTP)
        module = importlib.util.module_from_spec(spec)
        sys.modules["npu_serve_rawhttp"] = module
        spec.loader.exec_module(module)
    return sys.modules["npu_serve_rawhttp"]


async def raw_http(port: int, method: str, path: str, body: bytes | None = None, **kw):
    return await rawhttp().http("127.0.0.1", port, method, path, body, **kw)


def scrape(server, headers: dict | None = None) -> dict[tuple[str, frozenset], float]:
    """{(sample name, frozenset of label items): value} of the server's /metrics."""
    text = requests.get(server.url + "/metrics", headers=headers or {}, timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(samples: dict, name: str, **labels) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))
