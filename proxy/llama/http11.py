"""A small HTTP/1.1 keep-alive client for the hop to llama-server, and nothing else.

Why it exists: the hop is on every request's path, and a general client costs more there than
everything else llamagate does. httpx (pure-Python h11 parser, anyio streams, request and
response objects built per call) added ~1.5 ms a request; aiohttp ~0.5 ms; this ~0.15 ms
(`python contrib/bench/hop_clients.py`, README "Performance"). It speaks only what llama-server
answers: one request at a time per connection, a Content-Length or chunked body, keep-alive. The
parsing is httptools' (llhttp, C), which uvicorn already uses for the server side.

Everything else that talks HTTP (registries, downloads, the CLI, probes) keeps httpx.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from urllib.parse import urlsplit

import httptools

# Shorter than llama-server's own keep-alive (5 s): a connection idle this long is dropped rather
# than reused, so a request is never written into one llama-server is closing.
KEEPALIVE = 4.0
CONNECT_TIMEOUT = 10.0
# Past this much unread answer, stop reading from the socket until the reader catches up.
_HIGH_WATER = 1 << 20


class HTTPError(Exception):
    """The hop failed: no connection, or a connection that broke."""


class ConnectError(HTTPError):
    """Nothing reached the server: the call may be sent to another one."""


class _Connection(asyncio.Protocol):
    """One socket; `Response` reads what its parser hands over."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.got_bytes = False
        self.keep_alive = True
        self.error: Exception | None = None
        self.headers_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wake: asyncio.Future[None] | None = None

    # asyncio's callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(HTTPError(f"bad answer from llama-server: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.complete:
            self._fail(HTTPError(f"llama-server closed the connection{f': {exc}' if exc else ''}"))

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._notify()

    def on_message_complete(self) -> None:
        self.complete = True
        self._notify()

    def _fail(self, error: Exception) -> None:
        self.error = error
        if not self.headers_done.done():
            self.headers_done.set_exception(error)
            self.headers_done.exception()  # retrieved: a caller that already left must not be warned about
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def next_piece(self) -> bytes:
        """The next piece of the body, b"" at its end."""
        while not self.body:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        piece = self.body.popleft()
        self.buffered -= len(piece)
        if self.buffered <= _HIGH_WATER and self.transport is not None:
            self.transport.resume_reading()
        return piece

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class Response:
    """An answer being read. Closing one that was not read to its end closes its connection,
    which is how llama-server learns to stop generating."""

    def __init__(self, client: Client, conn: _Connection) -> None:
        self._client, self._conn = client, conn
        self.status_code = conn.status
        self.headers = conn.headers

    def header(self, name: bytes) -> str:
        return self.headers.get(name, b"").decode("latin-1")

    async def aiter_raw(self):  # noqa: ANN201 (an async generator of bytes)
        while piece := await self._conn.next_piece():
            yield piece

    async def aread(self) -> bytes:
        return b"".join([piece async for piece in self.aiter_raw()])

    def close(self) -> None:
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            self._client._release(conn)


class Client:
    """Keep-alive connections to one server (`base_url`, with a path prefix if any), each request
    sent with `headers`."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        url = urlsplit(base_url)
        self._tls = ssl.create_default_context() if url.scheme == "https" else None
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (443 if self._tls else 80)
        self._prefix = url.path.rstrip("/")
        host = url.netloc.rsplit("@", 1)[-1]
        lines = [f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._idle: list[_Connection] = []
        self._closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, self._host, self._port, ssl=self._tls), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as e:
            raise ConnectError(f"cannot connect to {self._host}:{self._port}: {e}") from e
        return conn

    def _pooled(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.got_bytes and now - conn.idle_since < KEEPALIVE:
                return conn
            conn.close()
        return None

    async def request(self, method: str, path: str, body: bytes = b"") -> Response:
        """Send a request and return once its status and headers are in."""
        head = (f"{method} {self._prefix}{path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n").encode("latin-1")
        message = head + self._head + b"\r\n" + body
        conn = self._pooled() or await self._connect()
        try:
            return await self._exchange(conn, message)
        except HTTPError:
            # Closed before any answer (llama-server closing a connection that sat idle, as
            # we reused it): nothing ran, so once more on a new connection.
            if conn.got_bytes:
                raise
        return await self._exchange(await self._connect(), message)

    async def _exchange(self, conn: _Connection, message: bytes) -> Response:
        conn._reset()
        assert conn.transport is not None
        conn.transport.write(message)
        try:
            await conn.headers_done
        except BaseException:
            conn.close()
            raise
        return Response(self, conn)

    def _release(self, conn: _Connection) -> None:
        if conn.complete and conn.keep_alive and conn.error is None and conn.transport is not None and not self._closed:
            conn.got_bytes = False
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
