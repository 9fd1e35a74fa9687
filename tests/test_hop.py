"""The llama-server hop (proxy/llama/client.py on its client, proxy/llama/http11.py) against
loopback servers: one that hangs up on the first connection without answering, as llama-server
does with a pooled connection it closed as idle; ones that count connections, to show that
requests share one and that a stream left early closes its own; one that cuts an answer short;
and a port nothing listens on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from proxy.llama import wire
from proxy.llama.client import Hop
from supervisor.errors import LlamagateError

SSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
COMPLETION = wire.CompletionRequest(prompt="x", stream=True, cache_prompt=True)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _json(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def _requests(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The head of each request on a kept-alive connection, body read, until the client closes it."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length")), 0)
        await reader.readexactly(length)
        yield head


def _answering(body: bytes, connections: list[int]):  # noqa: ANN202 (a stream handler)
    """A handler that answers every request on a connection with the JSON `body`, and counts
    connections in `connections`."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        async for _ in _requests(reader):
            writer.write(_json(body))
            await writer.drain()
        writer.close()

    return answer


class _Endpoint:
    """A target as the hop sees one."""

    def __init__(self, port: int, api_key: str = "k") -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_key = api_key

    async def failure(self, error: Exception) -> LlamagateError:
        return LlamagateError(500, f"failed: {error}")

    def failover(self, error: Exception) -> bool:
        return False


@asynccontextmanager
async def _hop_to(*handlers) -> AsyncIterator[tuple[Hop, list[_Endpoint]]]:
    """A loopback server per handler, and a hop with a target on each."""
    servers = [await asyncio.start_server(handler, "127.0.0.1", 0) for handler in handlers]
    hop = Hop()
    try:
        yield hop, [_Endpoint(server.sockets[0].getsockname()[1]) for server in servers]
    finally:
        await hop.aclose()
        for server in servers:
            server.close()


async def _tokenize(hop: Hop, endpoint: _Endpoint) -> list[int]:
    return (await hop.post(endpoint, "/tokenize", wire.TokenizeRequest("x"), wire.TokenizeResponse)).tokens


def test_a_stream_is_retried_once_when_the_connection_is_closed_unanswered():
    connections: list[int] = []

    async def hang_up_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        if len(connections) > 1:
            writer.write(SSE + _chunk(b'data: {"content":"hi","stop":true,"stop_type":"eos"}\n\n') + _chunk(b""))
            await writer.drain()
        writer.close()

    async def main() -> None:
        async with _hop_to(hang_up_once) as (hop, [endpoint]):
            chunks = [c async for c in hop.stream(endpoint, "/completion", COMPLETION, wire.CompletionChunk)]
            assert [c.content for c in chunks] == ["hi"] and chunks[0].stop
            assert len(connections) == 2

    asyncio.run(main())


def test_the_retry_is_only_once():
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def main() -> None:
        async with _hop_to(never) as (hop, [endpoint]):
            with pytest.raises(LlamagateError) as e:
                [c async for c in hop.stream(endpoint, "/completion", COMPLETION, wire.CompletionChunk)]
            assert e.value.status == 500 and "failed" in e.value.message

    asyncio.run(main())


def test_requests_to_one_server_share_its_connection_whatever_holds_them():
    """Each request holds its own lease object (a pool's lease is built per request): the hop's
    connections belong to the server and key, so sequential requests reuse one."""
    connections: list[int] = []

    async def main() -> None:
        async with _hop_to(_answering(b'{"tokens":[1,2]}', connections)) as (hop, [endpoint]):
            for _ in range(5):
                assert await _tokenize(hop, _Endpoint(endpoint.port)) == [1, 2]
            assert len(connections) == 1

    asyncio.run(main())


def test_concurrent_requests_to_several_servers_all_complete(monkeypatch):
    """New pools (a new server, a restarted runner's new key) retire only idle pools, never one
    whose request is still waiting for its answer."""
    import proxy.llama.client

    monkeypatch.setattr(proxy.llama.client, "_STALE", 0.0)  # every idle pool is stale at once

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for _ in _requests(reader):
            await asyncio.sleep(0.2)
            writer.write(_json(b'{"tokens":[7]}'))
            await writer.drain()
        writer.close()

    async def main() -> None:
        async with _hop_to(slow, slow, slow) as (hop, endpoints):
            def call(endpoint: _Endpoint, key: str):
                return _tokenize(hop, _Endpoint(endpoint.port, key))

            for key in ("old1", "old2"):  # two pools left idle, as by runners since restarted
                await call(endpoints[0], key)
            calls = [call(endpoint, key) for key in ("new1", "new2") for endpoint in endpoints for _ in range(3)]
            assert await asyncio.gather(*calls) == [[7]] * len(calls)

    asyncio.run(main())


def test_leaving_a_stream_closes_its_connection_and_a_whole_answer_keeps_it():
    """Closing a stream before its end closes the connection (how llama-server learns to stop
    generating); an answer read to its end, chunked or not, leaves the connection for the next."""
    connections: list[int] = []
    closed = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        async for head in _requests(reader):
            if b"/tokenize" in head:
                writer.write(SSE.replace(b"text/event-stream", b"application/json") + _chunk(b'{"tokens"')
                             + _chunk(b":[3]}") + _chunk(b""))
            else:
                writer.write(SSE + b"".join(_chunk(b'data: {"content":"a","stop":false}\n\n') for _ in range(3)))
            await writer.drain()
        closed.set()
        writer.close()

    async def main() -> None:
        async with _hop_to(answer) as (hop, [endpoint]):
            for _ in range(2):
                assert await _tokenize(hop, endpoint) == [3]
            assert len(connections) == 1
            chunks = hop.stream(endpoint, "/completion", COMPLETION, wire.CompletionChunk)
            assert (await anext(chunks)).content == "a"
            await chunks.aclose()
            await asyncio.wait_for(closed.wait(), 5)

    asyncio.run(main())


def test_a_connection_broken_mid_answer_fails_the_request_with_the_targets_error():
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(SSE + _chunk(b'data: {"content":"a","stop":false}\n\n'))
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with _hop_to(cut) as (hop, [endpoint]):
            seen = []
            with pytest.raises(LlamagateError) as e:
                async for c in hop.stream(endpoint, "/completion", COMPLETION, wire.CompletionChunk):
                    seen.append(c.content)
            assert e.value.status == 500 and "closed the connection" in e.value.message
            assert seen == ["a"]

    asyncio.run(main())


def test_a_refused_connection_asks_the_target_to_fail_over():
    """Nothing listening: the target is asked whether it moved (an --upstream pool's next
    server); where it did, the call goes there; where not, its error is the answer."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_json(b'{"tokens":[5]}'))
        await writer.drain()
        writer.close()

    async def main() -> None:
        with socket.socket() as dead:
            dead.bind(("127.0.0.1", 0))  # bound, never listening: refused
            dead_port = dead.getsockname()[1]
            async with _hop_to(answer) as (hop, [live]):
                class Moving(_Endpoint):
                    def failover(self, error: Exception) -> bool:
                        self.base_url = live.base_url
                        return True

                assert await _tokenize(hop, Moving(dead_port)) == [5]
                with pytest.raises(LlamagateError) as e:
                    await _tokenize(hop, _Endpoint(dead_port))
                assert e.value.status == 500 and "cannot connect" in e.value.message

    asyncio.run(main())


def test_a_connection_idle_past_the_keep_alive_is_not_reused(monkeypatch):
    """Idle longer than llama-server keeps a connection (5 s, ours 4 s), a new one is made,
    rather than a request written into one the server is closing."""
    from proxy.llama import http11

    connections: list[int] = []

    async def main() -> None:
        async with _hop_to(_answering(b'{"tokens":[]}', connections)) as (hop, [endpoint]):
            await _tokenize(hop, endpoint)
            monkeypatch.setattr(http11, "KEEPALIVE", 0.0)
            await _tokenize(hop, endpoint)
            assert len(connections) == 2

    asyncio.run(main())
