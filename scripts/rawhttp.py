"""A minimal HTTP/1.1 client over asyncio streams, for scripts/soak.py and the operations tests.

Full control where ordinary clients decide for you: Content-Length or chunked request bodies, small
reads with pauses (a slow reader), hanging up at any point (a cut request), and the time to the
status line (overload tests). One request per connection (`Connection: close`).

`python scripts/rawhttp.py burst PORT N PATH BODY [NAME:VALUE ...]` sends one request N times at once
(`burst`) and prints the answers as JSON: the overload test runs it as a fresh process, so what it
measures is the server, not the test runner (whose heap, late in the suite, takes a second to collect).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass

@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def open_conn(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port, limit=1 << 20)


def request_bytes(method: str, path: str, host: str, body: bytes | None = None, headers: dict | None = None,
                  chunked: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if body is None:
        return head
    if not chunked:
        return head + body
    out = [head]
    for i in range(0, len(body), 8192):
        piece = body[i:i + 8192]
        out.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str], slow: float = 0.0) -> bytes:
    """The whole body (Content-Length, chunked, or until close). `slow`: pause between small reads."""
    async def pause():
        if slow:
            await asyncio.sleep(slow * random.random())

    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                return bytes(out)
            while size > 0:
                piece = await reader.readexactly(min(size, 256 if slow else size))
                out += piece
                size -= len(piece)
                await pause()
            await reader.readexactly(2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


async def http(host: str, port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
               chunked: bool = False, timeout: float = 120.0, slow: float = 0.0) -> HttpResponse:
    reader, writer = await open_conn(host, port)

    async def exchange() -> HttpResponse:
        writer.write(request_bytes(method, path, host, body, headers, chunked))
        await writer.drain()
        status, head = await read_head(reader)
        return HttpResponse(status, head, await read_body(reader, head, slow))

    try:
        return await asyncio.wait_for(exchange(), timeout)
    finally:
        writer.close()


def sse_payloads(body: bytes) -> list[str]:
    text = body.decode("utf-8")
    return [e[len("data: "):] for e in text.strip("\n").split("\n\n") if e.startswith("data: ")]


async def burst(host: str, port: int, n: int, raw: bytes, timeout: float = 300.0) -> list[list]:
    """n connections opened first, then the request `raw` written on each, back to back. Per request:
    [status, seconds from its write to its status line, headers, body (text), seconds to the body's end]."""
    conns = await asyncio.gather(*(open_conn(host, port) for _ in range(n)))
    sent = []
    for _, writer in conns:
        writer.write(raw)
        sent.append(time.monotonic())

    async def answer(i: int) -> list:
        reader, writer = conns[i]
        status, headers = await read_head(reader)
        head_at = time.monotonic()
        body = await read_body(reader, headers)
        writer.close()
        return [status, head_at - sent[i], headers, body.decode("utf-8", "replace"), time.monotonic() - sent[i]]

    return await asyncio.wait_for(asyncio.gather(*(answer(i) for i in range(n))), timeout)


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[0] != "burst":
        print("usage: rawhttp.py burst PORT N PATH BODY [NAME:VALUE ...]", file=sys.stderr)
        return 2
    port, n, path, body = int(argv[1]), int(argv[2]), argv[3], argv[4].encode()
    headers = dict(h.split(":", 1) for h in argv[5:])
    raw = request_bytes("POST", path, "127.0.0.1", body, headers)
    print(json.dumps(asyncio.run(burst("127.0.0.1", port, n, raw))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
