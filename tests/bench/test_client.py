"""The streaming client against small raw-socket HTTP servers that behave in ways real servers do:
a role chunk before any token, usage at the end, an in-band error, a stream cut short, and
llama-server's habit of closing a connection it advertised as kept alive."""

from __future__ import annotations

import asyncio
import json

from npu_serve.bench.client import USAGE, ClientSettings, StreamClient
from npu_serve.bench.workload import Prompt


def _chunk(payload: str) -> bytes:
    data = f"data: {payload}\n\n".encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: keep-alive\r\nKeep-Alive: timeout=5, max=100\r\n\r\n")
ROLE = json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
TOKENS = [json.dumps({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": f}]})
          for t, f in (("Hel", None), ("lo", None), ("!", "length"))]
USAGE_CHUNK = json.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})


async def _read_request(reader: asyncio.StreamReader) -> dict | None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return json.loads(await reader.readexactly(length))


class RawServer:
    """`events` per request: the SSE payloads to send (with pauses), then how the response ends."""

    def __init__(self, events: list, *, one_request_per_connection: bool = False, end: str = "done"):
        self.events, self.one_per_conn, self.end = events, one_request_per_connection, end
        self.bodies: list[dict] = []
        self.connections = 0

    async def handle(self, reader, writer) -> None:
        self.connections += 1
        try:
            while True:
                body = await _read_request(reader)
                if self.bodies and self.one_per_conn and self._served_here:
                    return  # a second request on this connection: drop it unanswered, as llama-server does
                self.bodies.append(body)
                self._served_here = True
                writer.write(HEAD)
                for e in self.events:
                    if isinstance(e, float):
                        await writer.drain()
                        await asyncio.sleep(e)
                    else:
                        writer.write(_chunk(e))
                if self.end == "cut":
                    return
                writer.write(_chunk("[DONE]") + b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._served_here = False
            writer.close()

    _served_here = False


async def _run(server: RawServer, n: int, **settings) -> list:
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        cs = ClientSettings(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_tokens=3, **settings)
        async with StreamClient(cs) as client:
            return [await client.send(i, Prompt("a b c", 3)) for i in range(n)]
    finally:
        srv.close()


def test_ttft_skips_the_role_chunk_and_usage_gives_the_counts():
    server = RawServer([ROLE, 0.15, TOKENS[0], 0.05, TOKENS[1], 0.05, TOKENS[2], USAGE_CHUNK])
    (rec,) = asyncio.run(_run(server, 1, ignore_eos=True))
    assert rec.ok and rec.error is None and rec.retries == 0
    assert (rec.output_tokens, rec.prompt_tokens, rec.token_source, rec.finish_reason) == (3, 7, USAGE, "length")
    assert rec.ttft >= 0.15 and len(rec.chunk_times) == 3
    assert all(gap >= 0.04 for gap in rec.itl)  # the pauses between tokens (an upper bound would be load-dependent)
    body = server.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["ignore_eos"], body["temperature"], body["max_tokens"]) == (True, 0.0, 3)
    assert body["messages"] == [{"role": "user", "content": "a b c"}]


def test_without_usage_chunks_are_counted():
    (rec,) = asyncio.run(_run(RawServer([ROLE, *TOKENS]), 1, stream_usage=False, endpoint="chat"))
    assert rec.ok and (rec.output_tokens, rec.token_source, rec.prompt_tokens) == (3, "chunks", None)


def test_a_closed_keep_alive_connection_is_retried_on_a_new_one():
    server = RawServer([ROLE, *TOKENS, USAGE_CHUNK], one_request_per_connection=True)
    recs = asyncio.run(_run(server, 4))
    assert all(r.ok for r in recs), [r.error for r in recs]
    assert len(server.bodies) == 4 and server.connections >= 4
    assert sum(r.retries for r in recs) >= 1  # the client did reuse a connection the server had dropped


def test_in_band_errors_and_cut_streams_fail_the_request_without_retry():
    err = json.dumps({"error": {"object": "error", "message": "engine died", "code": 500}})
    (rec,) = asyncio.run(_run(RawServer([ROLE, TOKENS[0], err]), 1))
    assert not rec.ok and rec.error == "error in stream: engine died"
    (rec,) = asyncio.run(_run(RawServer([ROLE, TOKENS[0]], end="cut"), 1))
    assert not rec.ok and rec.retries == 0 and rec.error
