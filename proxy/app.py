"""The Litestar application: routes of every dialect, errors in each dialect's shape, lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from proxy.gateway import Gateway
from proxy.ollama.routes import ROUTES as OLLAMA_ROUTES
from proxy.openai.routes import ROUTES as OPENAI_ROUTES
from proxy.openai.routes import error_response
from supervisor.runtime.binary import find_llama_server
from supervisor.config import Config
from supervisor.errors import LlamagateError

log = logging.getLogger("llamagate")

VERSION = "0.1.0"


def _ollama_error(status: int, message: str) -> Response[bytes]:
    return Response(msgspec.json.encode({"error": message}), status_code=status, media_type="application/json")


def _on_error(request: Request, exc: LlamagateError) -> Response[bytes]:
    if exc.status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return error_response(request.url.path, exc.status, exc.message, exc.code) or _ollama_error(exc.status, exc.message)


def _on_http_exception(request: Request, exc: HTTPException) -> Response[bytes]:
    """Routing errors (unknown path, wrong method, body too large): in OpenAI's shape on /v1,
    else in Ollama's plain-text style."""
    if openai := error_response(request.url.path, exc.status_code, str(exc.detail)):
        return openai
    if exc.status_code == 404:
        return Response(b"404 page not found", status_code=404, media_type="text/plain")
    if exc.status_code == 405:
        return Response(b"405 method not allowed", status_code=405, media_type="text/plain")
    return _ollama_error(exc.status_code, str(exc.detail))


def _on_unexpected(request: Request, exc: Exception) -> Response[bytes]:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    message = "internal server error (see the llamagate log)"
    return error_response(request.url.path, 500, message) or _ollama_error(500, message)


def _version_header(response: Response) -> Response:
    response.headers["X-Llamagate-Version"] = VERSION
    return response


def create_app(config: Config) -> Litestar:
    gate = Gateway(config)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:
            # Reported now; looked up again at each load, so installing one needs no restart.
            binary = find_llama_server(config.llama_server, config.runtime_dir)
            log.info("llama-server: %s (from %s)", binary.path, binary.source)
        except LlamagateError as e:
            log.warning("%s", e.message)
        log.info("models: %s", config.models_dir)
        for name, urls in config.upstreams.items():
            log.info("upstream %s: %s", name, ", ".join(urls))
        gate.start()
        try:
            yield
        finally:
            await gate.aclose()

    return Litestar(
        route_handlers=[*OLLAMA_ROUTES, *OPENAI_ROUTES],
        state=State({"gate": gate}),
        lifespan=[lifespan],
        exception_handlers={
            LlamagateError: _on_error,
            HTTPException: _on_http_exception,
            Exception: _on_unexpected,
        },
        after_request=_version_header,
        logging_config=None,
        openapi_config=None,
    )
