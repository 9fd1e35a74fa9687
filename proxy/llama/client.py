"""The hop to llama-server: one pooled HTTP client per runner; SSE bytes in, decoded chunks out.

Kept behind this one small interface so the HTTP client can be tuned or swapped with numbers in
hand (see README, Performance).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

import httpx
import msgspec

from proxy.llama.wire import ErrorEnvelope
from supervisor.errors import LlamagateError
from supervisor.httpclient import async_client
from supervisor.runners.runner import Runner
from supervisor.models.remote import Lease

T = TypeVar("T")

_TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None)


# llama-server's error types that have a name of their own in the dialects (OpenAI's `code`).
_CODES = {"exceed_context_size_error": "context_length_exceeded"}


def _error(status: int, body: bytes) -> LlamagateError:
    """llama-server's error answer as ours: its status, message and (where it has one) code."""
    try:
        err = msgspec.json.decode(body, type=ErrorEnvelope).error
    except msgspec.DecodeError:
        return LlamagateError(status, body.decode(errors="replace").strip())
    if isinstance(err, str):
        return LlamagateError(status, err)
    return LlamagateError(status, err.message, _CODES.get(err.type))


class Upstream:
    def __init__(self) -> None:
        self._clients: dict[int, tuple[tuple[str, str], httpx.AsyncClient]] = {}

    def _client(self, runner: Runner | Lease) -> httpx.AsyncClient:
        # A restarted runner has a new port and key: its old pool is closed and replaced.
        key = (runner.base_url, runner.api_key)
        entry = self._clients.get(id(runner))
        if entry and entry[0] == key:
            return entry[1]
        if entry:
            asyncio.create_task(entry[1].aclose())
        client = async_client(
            base_url=runner.base_url,
            headers={"Content-Type": "application/json",
                     # Upstreams added with --upstream have no key of ours.
                     **({"Authorization": f"Bearer {runner.api_key}"} if runner.api_key else {})},
            timeout=_TIMEOUT,
            limits=httpx.Limits(max_keepalive_connections=32),
        )
        self._clients[id(runner)] = (key, client)
        return client

    async def _send(self, runner: Runner | Lease, path: str, content: bytes, stream: bool) -> httpx.Response:
        """POST, moving a lease of existing llama-servers to another one when its server refuses
        the connection (nothing reached it, so nothing runs twice)."""
        while True:
            client = self._client(runner)
            request = client.build_request("POST", path, content=content)
            try:
                try:
                    return await client.send(request, stream=stream)
                except httpx.RemoteProtocolError:
                    # A pooled connection llama-server closed while it sat idle (its keep-alive
                    # timeout is 5 s) fails before any answer: nothing ran, so once more on a
                    # new connection (a dead server then fails to connect, below).
                    return await client.send(client.build_request("POST", path, content=content), stream=stream)
            except httpx.ConnectError as e:
                if not (isinstance(runner, Lease) and runner.failover(e)):
                    raise await runner.failure(e) from e
            except httpx.HTTPError as e:
                raise await runner.failure(e) from e

    async def stream(self, runner: Runner | Lease, path: str, body: msgspec.Struct, chunk_type: type) -> AsyncIterator:
        """POST `body` and yield each SSE event decoded as `chunk_type`.

        An error status before the stream starts is raised with llama-server's status and
        message; an error event inside the stream is raised as a 500. Closing this generator
        closes the connection, which makes llama-server cancel the generation and free the slot.
        """
        response = await self._send(runner, path, msgspec.json.encode(body), stream=True)
        try:
            if response.status_code != 200:
                raise _error(response.status_code, await response.aread())
            decoder = msgspec.json.Decoder(chunk_type)
            buffer = b""
            async for data in response.aiter_raw():
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"data: "):
                        payload = line[6:]
                        if payload == b"[DONE]":
                            return
                        if payload.startswith(b'{"error"'):
                            raise _error(500, payload)
                        yield decoder.decode(payload)
                    elif line.startswith(b"error:"):
                        # llama-server builds before Nov 2025 sent mid-stream errors this way.
                        raise _error(500, line[6:].strip())
        except httpx.HTTPError as e:
            raise await runner.failure(e) from e
        finally:
            await response.aclose()

    async def relay(self, runner: Runner | Lease, path: str, content: bytes) -> AsyncIterator[tuple[str, bytes]]:
        """POST a body as the client sent it and yield llama-server's answer as (event, data)
        pairs: one per SSE event, or ("", body) for a JSON answer. An error status before the
        answer starts is raised; a broken connection after it is raised as a 500."""
        response = await self._send(runner, path, content, stream=True)
        try:
            if response.status_code != 200:
                raise _error(response.status_code, await response.aread())
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                yield "", await response.aread()
                return
            event, buffer = "", b""
            async for data in response.aiter_raw():
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"event:"):
                        event = line[6:].strip().decode()
                    elif line.startswith(b"data:"):
                        yield event, line[5:].strip()
                        event = ""
        except httpx.HTTPError as e:
            raise await runner.failure(e) from e
        finally:
            await response.aclose()

    async def post(self, runner: Runner | Lease, path: str, body: msgspec.Struct, response_type: type[T]) -> T:
        """POST `body` and decode the whole JSON answer (embeddings, tokenize, apply-template)."""
        response = await self._send(runner, path, msgspec.json.encode(body), stream=False)
        if response.status_code != 200:
            raise _error(response.status_code, response.content)
        return msgspec.json.decode(response.content, type=response_type)

    async def aclose(self) -> None:
        for _, client in self._clients.values():
            await client.aclose()
        self._clients.clear()
