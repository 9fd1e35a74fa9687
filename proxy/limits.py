"""What one request may send before any route reads it: the size of its headers (httptools, which
uvicorn parses with, sets no limit of its own). Body sizes are per route (proxy/body.py)."""

from __future__ import annotations

from litestar.types import ASGIApp, Receive, Scope, Send

from proxy.errors import send_error

HEADERS_LIMIT = 64 * 1024


def header_limit_layer(app: ASGIApp) -> ASGIApp:
    """The ASGI layer: a request whose header names and values together exceed HEADERS_LIMIT gets
    431 in its dialect's shape."""

    async def layer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > HEADERS_LIMIT:
            await send_error(send, scope["path"], 431, f"request headers larger than {HEADERS_LIMIT // 1024} KiB")
            return
        await app(scope, receive, send)

    return layer
