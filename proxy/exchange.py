"""One HTTP request as it ends: an ASGI layer times it, hears its status and its first streamed
byte, gives it a request id (X-Request-Id), and hands it on once the answer is sent; the lease
notes the model and tokens on it. Nothing is counted while the request runs, so /metrics, the
activity log and the request log line cost the hot path one object and a wrapped `send`."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from contextvars import ContextVar

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from proxy.cors import header

# Streamed answers: their first body byte is the first token (headers wait for it, see
# proxy/ollama/ndjson.py and proxy/openai/sse.py).
_STREAMED = (b"application/x-ndjson", b"text/event-stream")
# An id a proxy in front (nginx's $request_id, a UUID) or a client chose: kept if it is short and
# plain, so that it can't forge log lines or fill them.
_GIVEN_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")

request_log = logging.getLogger("llamagate.request")


class Exchange:
    """A request's facts, filled in as it goes: by the layer (method, path, id, route, status, times)
    and by the lease (model, tokens). `route` is the matched path template, what is counted;
    `path` the one asked for, what is logged."""

    __slots__ = ("method", "path", "client", "request_id", "route", "status", "started", "ended", "first_byte",
                 "model", "prompt_tokens", "generated_tokens", "generation_seconds")

    def __init__(self, method: str, path: str = "", client: str = "", request_id: str = "") -> None:
        self.method = method
        self.path = path  # without its query string, which may carry anything
        self.client = client
        self.request_id = request_id
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


def log_line(x: Exchange) -> None:
    """The request's line in the log, at INFO; in JSON lines its facts are keys too."""
    fields = {
        "request_id": x.request_id, "method": x.method, "path": x.path, "status": x.status,
        "duration_s": round(x.seconds, 3), "model": x.model, "prompt_tokens": x.prompt_tokens,
        "generated_tokens": x.generated_tokens, "client": x.client,
    }
    request_log.info("%s %s %d %.3fs model=%s tokens=%d/%d client=%s id=%s", x.method, x.path, x.status, x.seconds,
                     x.model or "-", x.prompt_tokens, x.generated_tokens, x.client or "-", x.request_id,
                     extra={"fields": fields})


def _request_id(scope: Scope) -> str:
    given = header(scope, b"x-request-id")
    return given if _GIVEN_ID.fullmatch(given) else secrets.token_hex(16)


_current: ContextVar[Exchange | None] = ContextVar("exchange", default=None)


def current() -> Exchange | None:
    """The request being served here (tasks a handler starts share it), if the layer is on."""
    return _current.get()


def exchange_layer(app: ASGIApp, finished: Callable[[Exchange], None]) -> ASGIApp:
    """The ASGI layer: every HTTP request gets an Exchange and an X-Request-Id, handed to `finished` once its
    answer is sent (or the request failed or was cancelled: status 499 if no answer started)."""

    async def layer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        client = scope.get("client")
        exchange = Exchange(scope["method"], scope["path"], client[0] if client else "", _request_id(scope))
        id_header = (b"x-request-id", exchange.request_id.encode())
        token = _current.set(exchange)
        streamed = False

        async def observed(message: Message) -> None:
            nonlocal streamed
            kind = message["type"]
            if kind == "http.response.start":
                exchange.status = message["status"]
                headers = [*message.get("headers", ()), id_header]
                streamed = any(k == b"content-type" and v.startswith(_STREAMED) for k, v in headers)
                message = {**message, "headers": headers}
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
