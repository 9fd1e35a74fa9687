"""The llama-server hop (proxy/upstream.py) against a loopback server that hangs up on the first
connection without answering, as llama-server does with a pooled connection it closed as idle."""

from __future__ import annotations

import asyncio

from proxy.llama import wire
from proxy.llama.client import Upstream
from supervisor.errors import LlamagateError

SSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class _Endpoint:
    """What Upstream needs of a runner."""

    def __init__(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_key = "k"

    async def failure(self, error: Exception) -> LlamagateError:
        return LlamagateError(500, f"failed: {error}")


async def _hang_up_once() -> tuple[asyncio.Server, list[int]]:
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        if len(connections) > 1:
            event = b'data: {"content":"hi","stop":true,"stop_type":"eos"}\n\n'
            writer.write(SSE + _chunk(event) + _chunk(b""))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, connections


def test_a_stream_is_retried_once_when_the_connection_is_closed_unanswered():
    async def main() -> None:
        server, connections = await _hang_up_once()
        upstream = Upstream()
        try:
            endpoint = _Endpoint(server.sockets[0].getsockname()[1])
            body = wire.CompletionRequest(prompt="x", stream=True, cache_prompt=True)
            chunks = [c async for c in upstream.stream(endpoint, "/completion", body, wire.CompletionChunk)]
            assert [c.content for c in chunks] == ["hi"] and chunks[0].stop
            assert len(connections) == 2
        finally:
            await upstream.aclose()
            server.close()

    asyncio.run(main())


def test_the_retry_is_only_once():
    async def main() -> None:
        async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(never, "127.0.0.1", 0)
        upstream = Upstream()
        try:
            endpoint = _Endpoint(server.sockets[0].getsockname()[1])
            body = wire.CompletionRequest(prompt="x", stream=True, cache_prompt=True)
            try:
                [c async for c in upstream.stream(endpoint, "/completion", body, wire.CompletionChunk)]
            except LlamagateError as e:
                assert e.status == 500 and "failed" in e.message
            else:
                raise AssertionError("a server that never answers must fail the request")
        finally:
            await upstream.aclose()
            server.close()

    asyncio.run(main())

