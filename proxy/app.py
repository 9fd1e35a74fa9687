"""The Litestar application: routes of every dialect, errors in each dialect's shape (the
handlers of proxy/errors.py), clients that leave (proxy/disconnect.py), lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from proxy.cors import cors_layer
from proxy.disconnect import watch_disconnect
from proxy.errors import on_error, on_http_exception, on_unexpected
from proxy.exchange import exchange_layer
from proxy.gateway import Gateway
from proxy.ollama.routes import ROUTES as OLLAMA_ROUTES
from proxy.openai.routes import ROUTES as OPENAI_ROUTES
from proxy.scrape import metrics
from supervisor.config import Config
from supervisor.errors import LlamagateError
from supervisor.runtime.binary import find_llama_server
from supervisor.version import VERSION

log = logging.getLogger("llamagate")


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

    app = Litestar(
        route_handlers=[*OLLAMA_ROUTES, *OPENAI_ROUTES, metrics],
        state=State({"gate": gate}),
        lifespan=[lifespan],
        exception_handlers={
            LlamagateError: on_error,
            HTTPException: on_http_exception,
            Exception: on_unexpected,
        },
        after_request=_version_header,
        middleware=[watch_disconnect],
        logging_config=None,
        openapi_config=None,
    )
    # Around the router, where Litestar puts its own CORS layer: a 404 or 405 gets it too, as in Ollama.
    app.asgi_handler = cors_layer(app.asgi_handler, config.origins)
    # Outermost: a request CORS refuses is counted too. It records at the request's end only.
    app.asgi_handler = exchange_layer(app.asgi_handler, gate.finished)
    return app
