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

from proxy.llama import ErrorEnvelope
from supervisor.errors import LlamagateError
from supervisor.httpclient import async_client
from supervisor.runner import Runner
from supervisor.upstreams import Lease

T = TypeVar("T")

_TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None)


def _error_message(body: bytes) -> str:
    try:
        err = msgspec.json.decode(body, type=ErrorEnvelope).error
        return err if isinstance(err, str) else err.message
    except msgspec.DecodeError:
        return body.decode(errors="replace").strip()


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
                    if stream:
                        raise
                    # A pooled connection llama-server closed while it sat idle (its keep-alive
                    # timeout is 5 s): whole-answer calls have no side effects, so once more.
                    return await client.send(client.build_request("POST", path, content=content))
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
                raise LlamagateError(response.status_code, _error_message(await response.aread()))
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
                            raise LlamagateError(500, _error_message(payload))
                        yield decoder.decode(payload)
                    elif line.startswith(b"error:"):
                        # llama-server builds before Nov 2025 sent mid-stream errors this way.
                        raise LlamagateError(500, _error_message(line[6:].strip()))
        except httpx.HTTPError as e:
            raise await runner.failure(e) from e
        finally:
            await response.aclose()

    async def post(self, runner: Runner | Lease, path: str, body: msgspec.Struct, response_type: type[T]) -> T:
        """POST `body` and decode the whole JSON answer (embeddings, tokenize, apply-template)."""
        response = await self._send(runner, path, msgspec.json.encode(body), stream=False)
        if response.status_code != 200:
            raise LlamagateError(response.status_code, _error_message(response.content))
        return msgspec.json.decode(response.content, type=response_type)

    async def aclose(self) -> None:
        for _, client in self._clients.values():
            await client.aclose()
        self._clients.clear()
