"""The hop to llama-server: one pooled HTTP client per runner; SSE bytes in, decoded chunks out.

Kept behind this one small interface so the HTTP client can be tuned or swapped with numbers in
hand (see README, Performance).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import msgspec

from proxy.llama import ErrorEnvelope
from supervisor.errors import LlamagateError
from supervisor.runner import Runner, State

_TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None)


def _error_message(body: bytes) -> str:
    try:
        err = msgspec.json.decode(body, type=ErrorEnvelope).error
        return err if isinstance(err, str) else err.message
    except msgspec.DecodeError:
        return body.decode(errors="replace").strip()


class Upstream:
    def __init__(self) -> None:
        self._clients: dict[int, tuple[tuple[int, str], httpx.AsyncClient]] = {}

    def _client(self, runner: Runner) -> httpx.AsyncClient:
        # A restarted runner has a new port and key: its old pool is closed and replaced.
        key = (runner.port, runner.api_key)
        entry = self._clients.get(id(runner))
        if entry and entry[0] == key:
            return entry[1]
        if entry:
            asyncio.create_task(entry[1].aclose())
        client = httpx.AsyncClient(
            base_url=runner.base_url,
            headers={"Authorization": f"Bearer {runner.api_key}", "Content-Type": "application/json"},
            timeout=_TIMEOUT,
            limits=httpx.Limits(max_keepalive_connections=32),
        )
        self._clients[id(runner)] = (key, client)
        return client

    def _failure(self, runner: Runner, e: Exception) -> LlamagateError:
        detail = f"; its last output:\n{runner.log_tail}" if runner.state is not State.READY else ""
        return LlamagateError(500, f"llama-server for {runner.name} failed: {e or type(e).__name__}{detail}")

    async def stream(self, runner: Runner, path: str, body: msgspec.Struct, chunk_type: type) -> AsyncIterator:
        """POST `body` and yield each SSE event decoded as `chunk_type`.

        An error status before the stream starts is raised with llama-server's status and
        message; an error event inside the stream is raised as a 500. Closing this generator
        closes the connection, which makes llama-server cancel the generation and free the slot.
        """
        client = self._client(runner)
        request = client.build_request("POST", path, content=msgspec.json.encode(body))
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise self._failure(runner, e) from e
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
            raise self._failure(runner, e) from e
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        for _, client in self._clients.values():
            await client.aclose()
        self._clients.clear()
