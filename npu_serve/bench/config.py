"""The benchmark's settings, checked once: every bad value is a BenchError that names the option.

`BenchConfig.from_args` turns the parsed command line into one frozen object; nothing after it
re-reads argparse. The defaults reproduce the speed issue's load pattern: concurrency 1, 8 and 32
with max(16, 2 x concurrency) requests each (16, 16, 64), 128 output tokens.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from npu_serve.bench.errors import BenchError
from npu_serve.bench.stats import parse_slos

DEFAULT_CONCURRENCY = "1,8,32"
DEFAULT_INPUT_TOKENS = (256, 256)


@dataclass(frozen=True)
class BenchConfig:
    base_url: str
    model: str | None
    api_key: str | None
    endpoint: str
    concurrency: tuple[int, ...] | None  # closed loop, one run per value; or
    request_rate: tuple[float, ...] | None  # open loop, one run per value
    max_concurrency: int | None
    num_prompts: tuple[int, ...]  # one per run
    input_tokens: tuple[int, int]
    tokenizer: str | None
    dataset: str | None
    max_tokens: int
    ignore_eos: bool
    temperature: float
    stream_usage: bool
    extra_body: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    salt: str | None = None
    slos: dict[str, float] = field(default_factory=dict)
    warmup: int = 0
    timeout_s: float = 600.0
    label: str | None = None
    output: str | None = None
    plot: str | None = None
    save_requests: bool = False
    server_pid: int | None = None
    progress: bool = True

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"

    @property
    def loads(self) -> tuple[float, ...]:
        return self.concurrency if self.concurrency is not None else self.request_rate  # type: ignore[return-value]

    @classmethod
    def from_args(cls, a) -> BenchConfig:
        if a.concurrency is not None and a.request_rate is not None:
            raise BenchError("give --concurrency (closed loop) or --request-rate (open loop), not both")
        rates = _float_list("--request-rate", a.request_rate) if a.request_rate is not None else None
        conc = None if rates is not None else _int_list("--concurrency", a.concurrency or DEFAULT_CONCURRENCY)
        if a.max_concurrency is not None:
            if rates is None:
                raise BenchError("--max-concurrency caps an open-loop run; with --concurrency the loop is "
                                 "closed already (drop one of them)")
            if a.max_concurrency < 1:
                raise BenchError(f"--max-concurrency must be >= 1, got {a.max_concurrency}")
        loads = conc if conc is not None else rates
        if a.dataset is not None and a.input_tokens is not None:
            raise BenchError("--input-tokens sizes synthetic prompts; --dataset brings its own prompts (drop one)")
        _positive("--max-tokens", a.max_tokens)
        _non_negative("--warmup", a.warmup)
        if not a.temperature >= 0:
            raise BenchError(f"--temperature must be >= 0, got {a.temperature}")
        if not a.timeout > 0:
            raise BenchError(f"--timeout must be > 0 seconds, got {a.timeout}")
        if a.plot is not None and not a.plot.lower().endswith(".png"):
            raise BenchError(f"--plot {a.plot}: the plot is a PNG file; name it *.png")
        return cls(
            base_url=normalize_base_url(a.base_url), model=a.model,
            api_key=a.api_key if a.api_key is not None else os.environ.get("OPENAI_API_KEY"),
            endpoint=a.endpoint, concurrency=conc, request_rate=rates, max_concurrency=a.max_concurrency,
            num_prompts=_num_prompts(a.num_prompts, conc, len(loads)),
            input_tokens=_token_range(a.input_tokens) if a.input_tokens is not None else DEFAULT_INPUT_TOKENS,
            tokenizer=a.tokenizer, dataset=a.dataset, max_tokens=a.max_tokens, ignore_eos=a.ignore_eos,
            temperature=a.temperature, stream_usage=not a.no_stream_usage, extra_body=_extra_body(a.extra_body),
            seed=a.seed, salt=a.salt, slos=parse_slos(a.goodput), warmup=a.warmup, timeout_s=a.timeout,
            label=a.label, output=a.output, plot=a.plot, save_requests=a.save_requests,
            server_pid=a.server_pid, progress=not a.no_progress)


def normalize_base_url(url: str) -> str:
    """`http://host:port` gets the usual `/v1`; any other path (e.g. MaaS's
    `/v1/infers/<uuid>/v1`) is kept as given."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BenchError(f"--base-url {url!r}: give an http(s) URL such as http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path or "/v1", "", ""))


def _items(option: str, text: str) -> list[str]:
    items = [x.strip() for x in str(text).split(",")]
    if not items or any(not x for x in items):
        raise BenchError(f"{option} {text!r}: give one value or a comma-separated list such as 1,8,32")
    return items


def _int_list(option: str, text: str) -> tuple[int, ...]:
    out = []
    for x in _items(option, text):
        try:
            v = int(x)
        except ValueError:
            raise BenchError(f"{option} {text!r}: {x!r} is not a whole number") from None
        _positive(option, v)
        out.append(v)
    return tuple(out)


def _float_list(option: str, text: str) -> tuple[float, ...]:
    out = []
    for x in _items(option, text):
        try:
            v = float(x)
        except ValueError:
            raise BenchError(f"{option} {text!r}: {x!r} is not a number of requests per second (or inf)") from None
        if not v > 0 or math.isnan(v):
            raise BenchError(f"{option} {text!r}: rates must be > 0 requests per second")
        out.append(v)
    return tuple(out)


def _num_prompts(text: str | None, conc: tuple[int, ...] | None, runs: int) -> tuple[int, ...]:
    if text is None:
        if conc is None:
            raise BenchError("--request-rate needs --num-prompts (how many requests each run sends)")
        return tuple(max(16, 2 * c) for c in conc)
    counts = _int_list("--num-prompts", text)
    if len(counts) == 1:
        return counts * runs
    if len(counts) != runs:
        raise BenchError(f"--num-prompts {text!r}: give one count, or one per run ({runs} runs); got {len(counts)}")
    return counts


def _token_range(text: str) -> tuple[int, int]:
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise BenchError(f"--input-tokens {text!r}: give N or MIN-MAX, e.g. 256 or 180-250") from None
    if lo < 1 or hi < lo:
        raise BenchError(f"--input-tokens {text!r}: need 1 <= MIN <= MAX")
    return lo, hi


def _extra_body(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise BenchError(f"--extra-body: not valid JSON ({e.msg})") from None
    if not isinstance(body, dict):
        raise BenchError("--extra-body: give a JSON object, e.g. '{\"top_k\": 1}'")
    if body.get("stream", True) is not True:
        raise BenchError("--extra-body: the benchmark streams; it cannot set stream to false")
    return body


def _positive(option: str, v: int) -> None:
    if v < 1:
        raise BenchError(f"{option} must be >= 1, got {v}")


def _non_negative(option: str, v: int) -> None:
    if v < 0:
        raise BenchError(f"{option} must be >= 0, got {v}")
