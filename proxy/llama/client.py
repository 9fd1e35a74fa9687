"""The hop to llama-server: one pooled HTTP client per target (a runner of ours, or a server of an
`--upstream` pool); SSE bytes in, decoded chunks out.

The HTTP client under it is proxy/llama/http11.py, chosen with numbers (see there and README,
Performance).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec

from proxy.llama import http11
from proxy.llama.wire import ErrorEnvelope
from supervisor.errors import LlamagateError

T = TypeVar("T")

# A client unused this long belongs to a process that is gone (a restart has a new port and key).
_STALE = 60.0


class Target(Protocol):
    """A llama-server a request is held on: where it is, its key, and what a failed call means."""

    @property
    def base_url(self) -> str: ...

    @property
    def api_key(self) -> str: ...  # "" for servers with no key of ours

    async def failure(self, error: Exception) -> LlamagateError:
        """The error a call that broke answers with (the runner's exit, say)."""
        ...

    def failover(self, error: Exception) -> bool:
        """After a refused connection: True if the target moved to another server, where the
        call may be sent (nothing reached the first, so nothing runs twice)."""
        ...


# llama-server's error types that have a name of their own in the dialects (OpenAI's `code`).
_CODES = {"exceed_context_size_error": "context_length_exceeded"}


# The key a progress chunk carries; generated text can't hold it unescaped.
_PROGRESS = b'"prompt_progress":{'


def _unreadable(error: msgspec.DecodeError) -> LlamagateError:
    """An answer of llama-server's that is no JSON of the shape it sends (a bug, or a process
    other than llama-server on its port): the client's error, not a traceback."""
    return LlamagateError(500, f"llama-server sent an answer that can't be read: {error}")


def _error(status: int, body: bytes) -> LlamagateError:
    """llama-server's error answer as ours: its status, message and (where it has one) code."""
    try:
        err = msgspec.json.decode(body, type=ErrorEnvelope).error
    except msgspec.DecodeError:
        return LlamagateError(status, body.decode(errors="replace").strip())
    if isinstance(err, str):
        return LlamagateError(status, err)
    return LlamagateError(status, err.message, _CODES.get(err.type))


@dataclass
class _Pool:
    client: http11.Client
    in_flight: int = 0
    used: float = field(default_factory=time.monotonic)


class Hop:
    def __init__(self) -> None:
        # Keyed by where and as whom, so every request to one server shares its connections.
        self._pools: dict[tuple[str, str], _Pool] = {}

    def _pool(self, target: Target) -> _Pool:
        """The target's pool, built without an await so that concurrent requests never build two
        pools for one server."""
        key = (target.base_url, target.api_key)
        if pool := self._pools.get(key):
            return pool
        # A new server or a restarted runner (new port, new key): a pool left idle this long
        # belongs to a process that is gone.
        now = time.monotonic()
        for k in [k for k, p in self._pools.items() if p.in_flight == 0 and now - p.used > _STALE]:
            self._pools.pop(k).client.close()
        pool = self._pools[key] = _Pool(http11.Client(target.base_url, {
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}),
        }))
        return pool

    @asynccontextmanager
    async def _post(self, target: Target, path: str, content: bytes) -> AsyncIterator[http11.Response]:
        """POST and hold the answer open; a target that refused the connection may move to
        another server and be tried there."""
        while True:
            pool = self._pool(target)
            pool.in_flight += 1  # from before the send: a pool in use is never retired
            try:
                response = await pool.client.request("POST", path, content)
                break
            except http11.ConnectError as e:
                if not target.failover(e):
                    raise await target.failure(e) from e
            except http11.HTTPError as e:
                raise await target.failure(e) from e
            finally:
                pool.in_flight -= 1
                pool.used = time.monotonic()
        pool.in_flight += 1
        try:
            yield response
        except http11.HTTPError as e:
            raise await target.failure(e) from e
        finally:
            pool.in_flight -= 1
            pool.used = time.monotonic()
            response.close()

    async def stream(
        self, target: Target, path: str, body: msgspec.Struct, chunk_type: type,
        last: Callable[[Any], None] | None = None,
    ) -> AsyncIterator:
        """POST `body` and yield each SSE event decoded as `chunk_type`; a stream that ends
        whole hands its last chunk (the one with llama-server's timings or usage) to `last`.

        An error status before the stream starts is raised with llama-server's status and
        message; an error event inside the stream, or an event that is no JSON, is raised as a
        500 (a broken connection as its target's failure). Closing this generator
        closes the connection, which makes llama-server cancel the generation and free the slot.

        The stream asks for llama-server's prompt progress, a chunk per prompt batch, and drops
        those chunks: writing one is how llama-server notices, within a batch, a connection closed
        while it reads a long prompt. Its other check, once a second without any result on its
        queue, never comes while other requests keep that queue busy.
        """
        chunk = None
        body = msgspec.structs.replace(body, return_progress=True)
        async with self._post(target, path, msgspec.json.encode(body)) as response:
            if response.status_code != 200:
                raise _error(response.status_code, await response.aread())
            decoder = msgspec.json.Decoder(chunk_type)
            buffer, done = b"", False
            async for data in response.aiter_raw():
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"data: "):
                        payload = line[6:]
                        if payload == b"[DONE]":
                            done = True
                            break
                        if payload.startswith(b'{"error"'):
                            raise _error(500, payload)
                        if _PROGRESS in payload:
                            continue
                        try:
                            chunk = decoder.decode(payload)
                        except msgspec.DecodeError as e:
                            raise _unreadable(e) from None
                        yield chunk
                    elif line.startswith(b"error:"):
                        # llama-server builds before Nov 2025 sent mid-stream errors this way.
                        raise _error(500, line[6:].strip())
                if done:
                    break
        if last is not None and chunk is not None:
            last(chunk)

    async def relay(self, target: Target, path: str, content: bytes) -> AsyncIterator[tuple[str | None, bytes]]:
        """POST a body as the client sent it and yield llama-server's answer as (event, data)
        pairs: one per SSE event ("" for one without a name), or (None, body) for a JSON answer,
        whatever the body asked (count_tokens answers JSON to a `stream`). An error status before the
        answer starts is raised; a broken connection after it is raised as a 500."""
        async with self._post(target, path, content) as response:
            if response.status_code != 200:
                raise _error(response.status_code, await response.aread())
            if not response.header(b"content-type").startswith("text/event-stream"):
                yield None, await response.aread()
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

    async def post(self, target: Target, path: str, body: msgspec.Struct, response_type: type[T]) -> T:
        """POST `body` and decode the whole JSON answer (embeddings, tokenize, apply-template)."""
        async with self._post(target, path, msgspec.json.encode(body)) as response:
            content = await response.aread()
            if response.status_code != 200:
                raise _error(response.status_code, content)
            try:
                return msgspec.json.decode(content, type=response_type)
            except msgspec.DecodeError as e:
                raise _unreadable(e) from None

    async def get(self, target: Target, path: str, timeout: float) -> bytes:
        """GET a small answer within `timeout` seconds (a runner's /metrics); a failure raises
        http11's error, TimeoutError or ours, for the caller to shrug off."""
        pool = self._pool(target)
        pool.in_flight += 1
        response = None
        try:
            async with asyncio.timeout(timeout):
                response = await pool.client.request("GET", path)
                content = await response.aread()
        finally:
            pool.in_flight -= 1
            pool.used = time.monotonic()
            if response is not None:
                response.close()
        if response.status_code != 200:
            raise _error(response.status_code, content)
        return content

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.client.close()
        self._pools.clear()
