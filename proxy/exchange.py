"""One HTTP request as it ends: an ASGI layer times it, hears its status and its first streamed
byte, and hands it on once the answer is sent; the lease notes the model and tokens on it.
Nothing is counted while the request runs, so /metrics and the activity log cost the hot path
one object and a wrapped `send`."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar

from litestar.types import ASGIApp, Message, Receive, Scope, Send

# Streamed answers: their first body byte is the first token (headers wait for it, see
# proxy/ollama/ndjson.py and proxy/openai/sse.py).
_STREAMED = (b"application/x-ndjson", b"text/event-stream")


class Exchange:
    """A request's facts, filled in as it goes: by the layer (method, route, status, times) and by
    the lease (model, tokens). `route` is the matched path template, never the raw path."""

    __slots__ = ("method", "route", "status", "started", "ended", "first_byte", "model", "prompt_tokens",
                 "generated_tokens", "generation_seconds")

    def __init__(self, method: str) -> None:
        self.method = method
        self.route = ""
        self.status = 0
        self.started = time.monotonic()
        self.ended = 0.0
        self.first_byte: float | None = None  # streamed answers only
        self.model = ""
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.generation_seconds = 0.0  # llama-server's own time generating (its `predicted_ms`)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def used(self, prompt: int, generated: int, generation_seconds: float = 0.0) -> None:
        """One upstream answer's tokens (a request with n choices makes n of them)."""
        self.prompt_tokens += prompt
        self.generated_tokens += generated
        self.generation_seconds += generation_seconds


_current: ContextVar[Exchange | None] = ContextVar("exchange", default=None)


def current() -> Exchange | None:
    """The request being served here (tasks a handler starts share it), if the layer is on."""
    return _current.get()


def exchange_layer(app: ASGIApp, finished: Callable[[Exchange], None]) -> ASGIApp:
    """The ASGI layer: every HTTP request gets an Exchange, handed to `finished` once its
    answer is sent (or the request failed or was cancelled: status 499 if no answer started)."""

    async def layer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        exchange = Exchange(scope["method"])
        token = _current.set(exchange)
        streamed = False

        async def observed(message: Message) -> None:
            nonlocal streamed
            kind = message["type"]
            if kind == "http.response.start":
                exchange.status = message["status"]
                streamed = any(k == b"content-type" and v.startswith(_STREAMED) for k, v in message.get("headers", ()))
            elif streamed and exchange.first_byte is None and message.get("body"):
                exchange.first_byte = time.monotonic()
            await send(message)

        try:
            await app(scope, receive, observed)
        finally:
            _current.reset(token)
            exchange.ended = time.monotonic()
            exchange.route = scope.get("path_template") or ""
            exchange.status = exchange.status or 499  # nginx's "client closed request"
            finished(exchange)

    return layer
