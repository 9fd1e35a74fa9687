"""The llama-server hop (proxy/llama/client.py on its client, proxy/llama/http11.py) against
loopback servers: one that hangs up on the first connection without answering, as llama-server
does with a pooled connection it closed as idle; ones that count connections, to show that
requests share one and that a stream left early closes its own; one that cuts an answer short;
and a port nothing listens on."""

from __future__ import annotations

import asyncio
import socket

from proxy.llama import wire
from proxy.llama.client import Hop
from supervisor.errors import LlamagateError

SSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class _Endpoint:
    """A target as the hop sees one."""

    def __init__(self, port: int, api_key: str = "k") -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_key = api_key

    async def failure(self, error: Exception) -> LlamagateError:
        return LlamagateError(500, f"failed: {error}")

    def failover(self, error: Exception) -> bool:
        return False


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
        hop = Hop()
        try:
            endpoint = _Endpoint(server.sockets[0].getsockname()[1])
            body = wire.CompletionRequest(prompt="x", stream=True, cache_prompt=True)
            chunks = [c async for c in hop.stream(endpoint, "/completion", body, wire.CompletionChunk)]
            assert [c.content for c in chunks] == ["hi"] and chunks[0].stop
            assert len(connections) == 2
        finally:
            await hop.aclose()
            server.close()

    asyncio.run(main())


def test_the_retry_is_only_once():
    async def main() -> None:
        async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(never, "127.0.0.1", 0)
        hop = Hop()
        try:
            endpoint = _Endpoint(server.sockets[0].getsockname()[1])
            body = wire.CompletionRequest(prompt="x", stream=True, cache_prompt=True)
            try:
                [c async for c in hop.stream(endpoint, "/completion", body, wire.CompletionChunk)]
            except LlamagateError as e:
                assert e.status == 500 and "failed" in e.message
            else:
                raise AssertionError("a server that never answers must fail the request")
        finally:
            await hop.aclose()
            server.close()

    asyncio.run(main())



def test_requests_to_one_server_share_its_connection_whatever_holds_them():
    """Each request holds its own lease object (a pool's lease is built per request): the hop's
    connections belong to the server and key, so sequential requests reuse one."""
    async def main() -> None:
        connections: list[int] = []

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                body = b'{"tokens":[1,2]}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             + f"content-length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        hop = Hop()
        try:
            port = server.sockets[0].getsockname()[1]
            for _ in range(5):
                result = await hop.post(_Endpoint(port), "/tokenize", wire.TokenizeRequest("x"), wire.TokenizeResponse)
                assert result.tokens == [1, 2]
            assert len(connections) == 1
        finally:
            await hop.aclose()
            server.close()

    asyncio.run(main())


def test_concurrent_requests_to_several_servers_all_complete(monkeypatch):
    """New pools (a new server, a restarted runner's new key) retire only idle pools, never one
    whose request is still waiting for its answer."""
    import proxy.llama.client

    monkeypatch.setattr(proxy.llama.client, "_STALE", 0.0)  # every idle pool is stale at once

    async def main() -> None:
        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                await asyncio.sleep(0.2)
                body = b'{"tokens":[7]}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             + f"content-length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
            writer.close()

        servers = [await asyncio.start_server(slow, "127.0.0.1", 0) for _ in range(3)]
        hop = Hop()

        def call(port: int, key: str):
            return hop.post(_Endpoint(port, key), "/tokenize", wire.TokenizeRequest("x"), wire.TokenizeResponse)

        try:
            ports = [s.sockets[0].getsockname()[1] for s in servers]
            for key in ("old1", "old2"):  # two pools left idle, as by runners since restarted
                await call(ports[0], key)
            calls = [call(port, key) for key in ("new1", "new2") for port in ports for _ in range(3)]
            results = await asyncio.gather(*calls)
            assert [r.tokens for r in results] == [[7]] * len(calls)
        finally:
            await hop.aclose()
            for s in servers:
                s.close()

    asyncio.run(main())


def _serve(handler):
    return asyncio.start_server(handler, "127.0.0.1", 0)


def test_leaving_a_stream_closes_its_connection_and_a_whole_answer_keeps_it():
    """Closing a stream before its end closes the connection (how llama-server learns to stop
    generating); an answer read to its end, chunked or not, leaves the connection for the next."""
    async def main() -> None:
        connections: list[int] = []
        closed = asyncio.Event()

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    closed.set()
                    break
                await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
                if b"/tokenize" in head:
                    writer.write(SSE.replace(b"text/event-stream", b"application/json") + _chunk(b'{"tokens"')
                                 + _chunk(b":[3]}") + _chunk(b""))
                else:
                    writer.write(SSE + b"".join(_chunk(b'data: {"content":"a","stop":false}\n\n') for _ in range(3)))
                await writer.drain()
            writer.close()

        server = await _serve(answer)
        hop = Hop()
        try:
            endpoint = _Endpoint(server.sockets[0].getsockname()[1])
            for _ in range(2):
                r = await hop.post(endpoint, "/tokenize", wire.TokenizeRequest("x"), wire.TokenizeResponse)
                assert r.tokens == [3]
            assert len(connections) == 1
            body = wire.CompletionRequest(prompt="x", stream=True, cache_prompt=True)
            chunks = hop.stream(endpoint, "/completion", body, wire.CompletionChunk)
            assert (await anext(chunks)).content == "a"
            await chunks.aclose()
            await asyncio.wait_for(closed.wait(), 5)
        finally:
            await hop.aclose()
            server.close()

    asyncio.run(main())


def test_a_connection_broken_mid_answer_fails_the_request_with_the_targets_error():
    async def main() -> None:
        async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(SSE + _chunk(b'data: {"content":"a","stop":false}\n\n'))
            await writer.drain()
            writer.close()

        server = await _serve(cut)
        hop = Hop()
        try:
            endpoint = _Endpoint(server.sockets[0].getsockname()[1])
            body = wire.CompletionRequest(prompt="x", stream=True, cache_prompt=True)
            seen = []
            try:
                async for c in hop.stream(endpoint, "/completion", body, wire.CompletionChunk):
                    seen.append(c.content)
            except LlamagateError as e:
                assert e.status == 500 and "closed the connection" in e.message
            else:
                raise AssertionError("a cut stream must fail")
            assert seen == ["a"]
        finally:
            await hop.aclose()
            server.close()

    asyncio.run(main())


def test_a_refused_connection_asks_the_target_to_fail_over(monkeypatch):
    """Nothing listening: the target is asked whether it moved (an --upstream pool's next
    server); where it did, the call goes there; where not, its error is the answer."""
    async def main() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            body = b'{"tokens":[5]}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()

        server = await _serve(answer)
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))  # bound, never listening: refused
        live_port = server.sockets[0].getsockname()[1]

        class Moving(_Endpoint):
            def failover(self, error: Exception) -> bool:
                self.base_url = f"http://127.0.0.1:{live_port}"
                return True

        hop = Hop()
        try:
            dead_port = dead.getsockname()[1]
            r = await hop.post(Moving(dead_port), "/tokenize", wire.TokenizeRequest("x"), wire.TokenizeResponse)
            assert r.tokens == [5]
            try:
                await hop.post(_Endpoint(dead_port), "/tokenize", wire.TokenizeRequest("x"), wire.TokenizeResponse)
            except LlamagateError as e:
                assert e.status == 500 and "cannot connect" in e.message
            else:
                raise AssertionError("a refused connection must fail")
        finally:
            await hop.aclose()
            server.close()
            dead.close()

    asyncio.run(main())


def test_a_connection_idle_past_the_keep_alive_is_not_reused(monkeypatch):
    """Idle longer than llama-server keeps a connection (5 s, ours 4 s), a new one is made,
    rather than a request written into one the server is closing."""
    from proxy.llama import http11

    async def main() -> None:
        connections: list[int] = []

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\n{"tokens":[]}')
                await writer.drain()
            writer.close()

        server = await _serve(answer)
        hop = Hop()
        try:
            endpoint = _Endpoint(server.sockets[0].getsockname()[1])
            await hop.post(endpoint, "/tokenize", wire.TokenizeRequest("x"), wire.TokenizeResponse)
            monkeypatch.setattr(http11, "KEEPALIVE", 0.0)
            await hop.post(endpoint, "/tokenize", wire.TokenizeRequest("x"), wire.TokenizeResponse)
            assert len(connections) == 2
        finally:
            await hop.aclose()
            server.close()

    asyncio.run(main())
