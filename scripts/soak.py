#!/usr/bin/env python3
"""Soak test: many concurrent clients, good and bad, against one npu-serve on this machine.

    python scripts/soak.py --model DIR --duration 60            # starts `npu-serve serve` itself
    python scripts/soak.py --url http://127.0.0.1:8000 --server-pid PID --duration 1800

Loopback only (the target must be 127.0.0.1, ::1 or localhost), bounded in time (--duration, at
most 4 h) and in count (--max-requests). The server should be greedy-exact (it is) and run with a
small --max-request-body-bytes (the spawned one gets 65536) so oversized bodies are cheap to send.

First it takes a reference answer for every request template, one request at a time. Then
--concurrency workers send, until the time or count runs out, a mix of:
- valid requests (chat and completions, streamed or whole, greedy or seeded sampling), each of
  which must get exactly its reference answer: status 200, every token (usage), the same text,
  the same finish reason, `[DONE]` at the end of a stream;
- the same requests cut by the client (a third of all requests): right after sending (mid-prefill
  for the long prompt), after some stream events, or after a delay for whole answers;
- slow readers (small reads with pauses), which must still get their full, correct answer;
- oversized bodies (Content-Length and chunked), which must get 413 with the flat error body;
- malformed JSON and invalid parameters, which must get 400 with the flat error body.
Afterwards every KV block must be free (read from /metrics) and the server's RSS must have grown by
less than --rss-bound-mb since the reference phase. Prints a JSON report; exit status 0 iff clean.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rawhttp import HttpResponse, http, open_conn, read_head, request_bytes, sse_payloads  # noqa: E402

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
MAX_DURATION_S = 4 * 3600
FLAT_KEYS = {"object", "message", "type", "param", "code"}

# ---- the workload --------------------------------------------------------------------------------

PROMPTS = [
    "Write a short poem about the sea.",
    "List three uses of a paperclip.",
    "Explain what a prefix cache is, briefly.",
    "Translate 'good morning' into French and German.",
    "Describe a rainy afternoon in a small town. " * 20,  # long: several prefill chunks
]


@dataclass(frozen=True)
class Template:
    endpoint: str  # "chat" | "completions"
    prompt: int
    max_tokens: int
    seed: int | None  # None: greedy

    def body(self, model: str, stream: bool) -> dict:
        b: dict = {"model": model, "max_tokens": self.max_tokens, "ignore_eos": True, "stream": stream}
        if self.seed is None:
            b["temperature"] = 0
        else:
            b.update(temperature=1.0, seed=self.seed)
        if stream:
            b["stream_options"] = {"include_usage": True}
        if self.endpoint == "chat":
            b["messages"] = [{"role": "user", "content": PROMPTS[self.prompt]}]
        else:
            b["prompt"] = PROMPTS[self.prompt]
        return b

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"


TEMPLATES = [Template(e, p, m, s) for e in ("chat", "completions") for p in range(len(PROMPTS))
             for m, s in ((8, None), (24, 7))]


@dataclass
class Answer:
    text: str
    completion_tokens: int
    finish_reason: str


def whole_answer(resp: HttpResponse, endpoint: str) -> Answer:
    data = json.loads(resp.body)
    choice = data["choices"][0]
    text = choice["message"]["content"] if endpoint == "chat" else choice["text"]
    return Answer(text or "", data["usage"]["completion_tokens"], choice["finish_reason"])


def stream_answer(resp: HttpResponse, endpoint: str) -> Answer:
    payloads = sse_payloads(resp.body)
    if not payloads or payloads[-1] != "[DONE]":
        raise AssertionError(f"stream did not end with [DONE]: {payloads[-2:]}")
    events = [json.loads(p) for p in payloads[:-1]]
    if any("error" in e for e in events):
        raise AssertionError(f"in-band error: {[e for e in events if 'error' in e]}")
    text, finish = "", None
    for e in events:
        for c in e["choices"]:
            text += (c["delta"].get("content") or "") if endpoint == "chat" else c["text"]
            finish = c.get("finish_reason") or finish
    usage = events[-1]["usage"]
    return Answer(text, usage["completion_tokens"], finish)


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def fail(self, kind: str, detail: str) -> None:
        self.counts["failed"] += 1
        if len(self.failures) < 50:
            self.failures.append(f"{kind}: {detail}")


class Soak:
    def __init__(self, host: str, port: int, model: str, body_limit: int, rng: random.Random):
        self.host, self.port, self.model, self.body_limit, self.rng = host, port, model, body_limit, rng
        self.reference: dict[Template, Answer] = {}
        self.report = Report()

    async def take_references(self) -> None:
        for t in TEMPLATES:
            resp = await http(self.host, self.port, "POST", t.path, json.dumps(t.body(self.model, False)).encode())
            if resp.status != 200:
                raise RuntimeError(f"reference request failed: {resp.status} {resp.body[:200]!r}")
            self.reference[t] = whole_answer(resp, t.endpoint)

    async def one(self) -> None:
        kinds = ["valid", "valid", "valid", "cut", "cut", "slow", "oversized", "malformed", "invalid"]
        kind = self.rng.choice(kinds)
        start = time.monotonic()
        try:
            await getattr(self, f"_{kind}")()
            self.report.counts[kind] += 1
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the soak
            self.report.fail(kind, f"{type(e).__name__}: {e}")
        self.report.latencies.append(time.monotonic() - start)

    async def _valid(self, slow: float = 0.0) -> None:
        t = self.rng.choice(TEMPLATES)
        stream = self.rng.random() < 0.5
        resp = await http(self.host, self.port, "POST", t.path, json.dumps(t.body(self.model, stream)).encode(),
                          slow=slow)
        if resp.status != 200:
            raise AssertionError(f"{resp.status} {resp.body[:200]!r}")
        got = stream_answer(resp, t.endpoint) if stream else whole_answer(resp, t.endpoint)
        want = self.reference[t]
        if got != want:
            raise AssertionError(f"{t} stream={stream}: got {got!r}, want {want!r}")

    async def _slow(self) -> None:
        await self._valid(slow=0.05)

    async def _cut(self) -> None:
        t = self.rng.choice(TEMPLATES)
        stream = self.rng.random() < 0.6
        reader, writer = await open_conn(self.host, self.port)
        try:
            writer.write(request_bytes("POST", t.path, self.host, json.dumps(t.body(self.model, stream)).encode()))
            await writer.drain()
            where = self.rng.random()
            if where < 0.3:
                return  # at once: mid-prefill (or before the request is even read)
            if stream:
                await read_head(reader)
                for _ in range(self.rng.randint(1, 6)):  # a few events, then hang up mid-stream
                    if not await reader.readline():
                        break
            else:
                await asyncio.sleep(self.rng.random() * 0.3)
        finally:
            writer.close()

    async def _oversized(self) -> None:
        body = json.dumps({"model": self.model, "prompt": "x" * (self.body_limit + 100), "max_tokens": 1}).encode()
        chunked = self.rng.random() < 0.5
        resp = await http(self.host, self.port, "POST", "/v1/completions", body, chunked=chunked)
        self._flat(resp, 413)

    async def _malformed(self) -> None:
        body = self.rng.choice([b'{"model": "x", "prompt": ', b"not json", b"[1, 2", b"\xff\xfe{}"])
        self._flat(await http(self.host, self.port, "POST", "/v1/completions", body), 400)

    async def _invalid(self) -> None:
        body = {"model": self.model, "prompt": "hi", "temperature": -1}
        self._flat(await http(self.host, self.port, "POST", "/v1/completions", json.dumps(body).encode()), 400)

    @staticmethod
    def _flat(resp: HttpResponse, status: int) -> None:
        if resp.status != status:
            raise AssertionError(f"status {resp.status}, want {status}: {resp.body[:200]!r}")
        body = json.loads(resp.body)
        if set(body) != FLAT_KEYS or body["code"] != status:
            raise AssertionError(f"not the flat error body: {body}")

    async def metrics(self) -> dict[str, float]:
        resp = await http(self.host, self.port, "GET", "/metrics")
        out = {}
        for line in resp.body.decode().splitlines():
            if line.startswith("npu_serve:") and "{" in line:
                name = line.split("{", 1)[0]
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return out


async def run(args, host: str, port: int, pid: int | None) -> dict:
    rng = random.Random(args.seed)
    soak = Soak(host, port, args.served_model_name, args.body_limit, rng)
    await soak.take_references()
    rss_start = rss_mb(pid)
    deadline = time.monotonic() + args.duration
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while time.monotonic() < deadline and sent < args.max_requests:
            sent += 1
            await soak.one()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.monotonic() - started
    metrics = {}
    settle = time.monotonic() + 30
    while time.monotonic() < settle:  # aborts are processed by the engine within a step or two
        metrics = await soak.metrics()
        if metrics.get("npu_serve:kv_cache_blocks_used", 1) == 0 and metrics.get("npu_serve:num_requests_running", 1) == 0:
            break
        await asyncio.sleep(0.2)
    rss_end = rss_mb(pid)
    r = soak.report
    if metrics.get("npu_serve:kv_cache_blocks_used", -1) != 0:
        r.fail("kv", f"KV blocks still used after the soak: {metrics.get('npu_serve:kv_cache_blocks_used')}")
    if rss_start is not None and rss_end is not None and rss_end - rss_start > args.rss_bound_mb:
        r.fail("rss", f"RSS grew {rss_end - rss_start:.1f} MiB (bound {args.rss_bound_mb} MiB)")
    lat = sorted(r.latencies) or [0.0]
    return {
        "duration_s": round(elapsed, 1), "requests": sent, "requests_per_s": round(sent / elapsed, 2),
        "by_kind": dict(r.counts), "failures": r.failures,
        "latency_s": {"p50": round(statistics.median(lat), 3), "p99": round(lat[int(0.99 * (len(lat) - 1))], 3),
                      "max": round(lat[-1], 3)},
        "rss_mb": {"start": rss_start, "end": rss_end, "bound": args.rss_bound_mb},
        "kv_cache_blocks_used_after": metrics.get("npu_serve:kv_cache_blocks_used"),
        "metrics_after": {k: v for k, v in sorted(metrics.items()) if not k.endswith(("_bucket", "_created"))},
        "ok": not r.failures,
    }


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "npu_serve.cli", "serve", "--model", args.model, "--device", "cpu",
           "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", args.served_model_name, "--max-request-body-bytes", str(args.body_limit),
           "--max-num-batched-tokens", "64", "--max-model-len", "512", "--num-kv-blocks", str(args.num_kv_blocks),
           "--no-moderation", "--log-level", "warning",
           *args.server_args]
    env = {**os.environ, "NPU_SERVE_DATA": os.environ.get("NPU_SERVE_DATA", "/nonexistent-npu-serve-soak")}
    return subprocess.Popen(cmd, env=env)


async def wait_healthy(host: str, port: int, proc: subprocess.Popen | None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if (await http(host, port, "GET", "/health", timeout=5)).status == 200:
                return
        except (OSError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the server did not become healthy")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="start `npu-serve serve --model MODEL` on a free loopback port")
    target.add_argument("--url", help="an already running server (loopback only)")
    p.add_argument("--server-pid", type=int, default=None, help="with --url: the server's pid, for its RSS")
    p.add_argument("--served-model-name", default="soak")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (at most 4 h)")
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--body-limit", type=int, default=65536, help="the server's --max-request-body-bytes")
    p.add_argument("--num-kv-blocks", type=int, default=48,
                   help="with --model: a pool small enough that concurrent long prompts preempt each other")
    p.add_argument("--rss-bound-mb", type=float, default=100.0, help="allowed RSS growth after the reference phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the report here")
    p.add_argument("server_args", nargs="*", help="after --: more `npu-serve serve` flags for --model")
    args = p.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S}]")
    proc = None
    if args.url:
        u = urllib.parse.urlsplit(args.url)
        if u.scheme != "http" or u.hostname not in LOOPBACK:
            p.error("--url must be http:// on 127.0.0.1, ::1 or localhost: this tool only loads this machine")
        host, port, pid = u.hostname, u.port or 80, args.server_pid
    else:
        host, port = "127.0.0.1", free_port()
        proc = spawn(args, port)
        pid = proc.pid
    try:
        asyncio.run(wait_healthy(host, port, proc))
        report = asyncio.run(run(args, host, port, pid))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    if proc is not None:
        report["server_exit_code"] = code
        if code != 0:
            report["ok"] = False
            report["failures"].append(f"the server exited with {code} after SIGTERM")
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
