"""Errors in the shape of the dialect a request speaks: OpenAI's (or Anthropic's) on /v1, Ollama's
elsewhere; the app's exception handlers, and the same answers for the ASGI layers around the app."""

from __future__ import annotations

import logging

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import Send

from proxy.openai import translate
from proxy.openai.sse import JSON, json_answer
from supervisor.errors import LlamagateError

log = logging.getLogger("llamagate")


def error_response(path: str, status: int, message: str, code: str | None = None) -> Response[bytes] | None:
    """An error in the shape of the API the path belongs to; None outside /v1."""
    if path.startswith("/v1/messages"):
        return json_answer(translate.anthropic_error(status, message), status)
    if path == "/v1" or path.startswith("/v1/"):
        return json_answer(translate.error(status, message, code), status)
    return None


def _ollama_body(message: str) -> bytes:
    return msgspec.json.encode({"error": message})


def _ollama_error(status: int, message: str) -> Response[bytes]:
    return Response(_ollama_body(message), status_code=status, media_type="application/json")


async def send_error(send: Send, path: str, status: int, message: str, code: str | None = None,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """An error answered from an ASGI layer, before any route: the JSON of error_response on
    /v1, Ollama's `{"error": ...}` everywhere else."""
    v1 = error_response(path, status, message, code)
    body = v1.content if v1 else _ollama_body(message)
    start = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


def on_error(request: Request, exc: LlamagateError) -> Response[bytes]:
    if exc.status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return error_response(request.url.path, exc.status, exc.message, exc.code) or _ollama_error(exc.status, exc.message)


def on_http_exception(request: Request, exc: HTTPException) -> Response[bytes]:
    """Routing errors (unknown path, wrong method, body too large): in OpenAI's shape on /v1,
    else in Ollama's plain-text style."""
    if openai := error_response(request.url.path, exc.status_code, str(exc.detail)):
        return openai
    if exc.status_code == 404:
        return Response(b"404 page not found", status_code=404, media_type="text/plain")
    if exc.status_code == 405:
        return Response(b"405 method not allowed", status_code=405, media_type="text/plain")
    return _ollama_error(exc.status_code, str(exc.detail))


def on_unexpected(request: Request, exc: Exception) -> Response[bytes]:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    message = "internal server error (see the llamagate log)"
    return error_response(request.url.path, 500, message) or _ollama_error(500, message)
