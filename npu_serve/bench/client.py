"""A streaming OpenAI-compatible client that timestamps every piece of output as it arrives.

One POST per request (`/chat/completions` or `/completions` under the base URL), `stream: true`,
read line by line as server-sent events. What is measured, with `time.perf_counter()`:
- TTFT: from just before the request is sent to the first chunk that carries text (content,
  reasoning_content, or completions' text). Role-only chunks do not count: some servers send one
  before any token exists.
- chunk times: every text-carrying chunk, so ITL = the gaps between them. A server may merge several
  tokens into one chunk (npu-serve does for a client that falls behind); `tokens_per_chunk` in the
  statistics shows when that happened.
- latency: until `[DONE]`.
Output tokens are the server's `usage.completion_tokens` (asked for with
`stream_options: {"include_usage": true}`); a server that sends no usage gets its text chunks
counted instead, and the record says which (`token_source`).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from npu_serve.bench.errors import BenchError
from npu_serve.bench.workload import Prompt

USAGE = "usage"
CHUNKS = "chunks"
STALE_RETRIES = 3  # sends of one request on connections the server had closed, before it counts as failed


@dataclass(frozen=True)
class ClientSettings:
    base_url: str
    model: str
    endpoint: str = "chat"  # "chat" | "completions"
    api_key: str | None = None
    max_tokens: int = 128
    temperature: float = 0.0
    ignore_eos: bool = False
    stream_usage: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0


@dataclass
class RequestRecord:
    """One request as the client saw it. Times are seconds; `start` is perf_counter-absolute, the
    rest relative to it."""

    index: int
    prompt_tokens_sent: int  # the client's count of the prompt text
    max_tokens: int
    start: float = 0.0
    ok: bool = False
    error: str | None = None
    ttft: float | None = None
    latency: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None  # from the server's usage, when it sent one
    token_source: str = CHUNKS
    finish_reason: str | None = None
    retries: int = 0  # times it was sent again because its connection had been closed (see send)

    @property
    def itl(self) -> list[float]:
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]

    def to_dict(self) -> dict:
        return asdict(self)


class StreamClient:
    """Use as `async with StreamClient(settings) as c: record = await c.send(i, prompt)`."""

    def __init__(self, settings: ClientSettings):
        self.s = settings
        self.url = settings.base_url.rstrip("/") + ("/chat/completions" if settings.endpoint == "chat" else "/completions")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> StreamClient:
        # limit=0: the drivers bound concurrency themselves; the pool must never queue a request.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), headers=headers(self.s.api_key),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self.s.timeout_s),
            read_bufsize=1 << 20)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()

    def body(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.s.model, "max_tokens": self.s.max_tokens,
                                "temperature": self.s.temperature, "stream": True}
        if self.s.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt.text}]
        else:
            body["prompt"] = prompt.text
        if self.s.stream_usage:
            body["stream_options"] = {"include_usage": True}
        if self.s.ignore_eos:  # sent only when asked: strict OpenAI servers refuse unknown fields
            body["ignore_eos"] = True
        body.update(self.s.extra_body)
        return body

    async def send(self, index: int, prompt: Prompt) -> RequestRecord:
        """Run one request to its end. Never raises for a failed request: the record says what failed.

        A request that could not even be sent because the kept-alive connection it was given had been
        closed by the server is sent again on a new connection (at most STALE_RETRIES times; timings
        restart, `retries` counts them). llama.cpp's llama-server does this: it answers
        `Keep-Alive: timeout=5, max=100` but closes the socket after every streamed response."""
        assert self._session is not None, "use StreamClient as an async context manager"
        rec = RequestRecord(index=index, prompt_tokens_sent=prompt.tokens, max_tokens=self.s.max_tokens)
        body = json.dumps(self.body(prompt))
        while True:
            rec.start = time.perf_counter()
            answered = False
            try:
                async with self._session.post(self.url, data=body) as resp:
                    answered = True
                    if resp.status != 200:
                        rec.error = f"HTTP {resp.status}: {error_message(await resp.text())}"
                    elif "text/event-stream" not in resp.headers.get("Content-Type", ""):
                        rec.error = f"the server did not stream (Content-Type {resp.headers.get('Content-Type')!r})"
                    else:
                        await self._read_stream(resp, rec)
                return rec
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
                if answered or rec.retries >= STALE_RETRIES:
                    rec.error = _describe(e)
                    return rec
                rec.retries += 1
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                rec.error = _describe(e)
                return rec

    async def _read_stream(self, resp: aiohttp.ClientResponse, rec: RequestRecord) -> None:
        usage: dict | None = None
        done = False
        async for raw in resp.content:
            now = time.perf_counter()
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, SSE comments, event names
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            try:
                chunk = json.loads(payload)
            except json.JSONDecodeError:
                rec.error = f"invalid JSON in stream: {payload[:200]!r}"
                return
            if chunk.get("error") is not None or chunk.get("object") == "error":
                rec.error = f"error in stream: {error_message(payload.decode('utf-8', 'replace'))}"
                return
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if _text_of(choice):
                    if rec.ttft is None:
                        rec.ttft = now - rec.start
                    rec.chunk_times.append(now - rec.start)
                if choice.get("finish_reason"):
                    rec.finish_reason = choice["finish_reason"]
        rec.latency = time.perf_counter() - rec.start
        if not done:
            rec.error = "the stream ended before data: [DONE]"
            return
        if usage and isinstance(usage.get("completion_tokens"), int):
            rec.output_tokens, rec.token_source = usage["completion_tokens"], USAGE
            rec.prompt_tokens = usage.get("prompt_tokens")
        else:
            rec.output_tokens, rec.token_source = len(rec.chunk_times), CHUNKS
        if rec.ttft is None:  # no text at all (e.g. only special tokens): the first token came with the end
            rec.ttft = rec.latency
        rec.ok = True


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _text_of(choice: dict) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    return choice.get("text") or ""


def headers(api_key: str | None) -> dict[str, str]:
    h = {"Content-Type": "application/json"}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


def error_message(body: str) -> str:
    """The message of an error body (OpenAI / vLLM `{"error": {...}}` or flat, MaaS `error_msg`)."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body.strip()[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("error_msg") or err.get("detail")
            if msg:
                return str(msg)[:300]
        elif isinstance(err, str):
            return err[:300]
    return body.strip()[:300]


async def served_models(base_url: str, api_key: str | None, timeout_s: float = 30.0) -> list[str]:
    """The model ids `GET {base_url}/models` lists; a clear BenchError when the server can't be asked."""
    url = base_url.rstrip("/") + "/models"
    try:
        async with aiohttp.ClientSession(headers=headers(api_key), timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
            async with s.get(url) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise BenchError(f"GET {url} answered HTTP {resp.status}: {error_message(text)}")
                data = json.loads(text)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        raise BenchError(f"cannot reach {url} ({type(e).__name__}: {e}); is the server running, and is "
                         "--base-url right (it ends in /v1 for most servers)?") from e
    except json.JSONDecodeError as e:
        raise BenchError(f"GET {url} did not answer JSON") from e
    return [m["id"] for m in data.get("data", []) if isinstance(m, dict) and "id" in m]
