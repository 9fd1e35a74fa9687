"""The Litestar application: routes of every dialect and of the status page, errors in each
dialect's shape (the handlers of proxy/errors.py), clients that leave (proxy/disconnect.py), the
ASGI layers around it (CORS, header size, Host, keys), lifespan."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from proxy.auth import KeyRing, auth_layer
from proxy.body import METADATA_BODY_LIMIT
from proxy.cors import cors_layer
from proxy.disconnect import watch_disconnect
from proxy.errors import on_error, on_http_exception, on_unexpected
from proxy.exchange import exchange_layer
from proxy.gateway import Gateway
from proxy.hosts import binds_loopback, host_check_layer
from proxy.limits import header_limit_layer
from proxy.ollama.routes import ROUTES as OLLAMA_ROUTES
from proxy.openapi import openapi
from proxy.openai.routes import ROUTES as OPENAI_ROUTES
from proxy.scrape import metrics
from proxy.service.notify import Notifier
from proxy.ui.routes import ROUTES as UI_ROUTES
from supervisor.config import Config
from supervisor.errors import LlamagateError
from supervisor.runtime.binary import find_llama_server
from supervisor.version import VERSION

log = logging.getLogger("llamagate")


# A coroutine: Litestar runs a plain function hook in a worker thread, a thread hop per request.
async def _version_header(response: Response) -> Response:
    response.headers["X-Llamagate-Version"] = VERSION
    return response


def create_app(config: Config, notifier: Notifier | None = None) -> Litestar:
    gate = Gateway(config)
    keys = KeyRing(config.keys)
    notifier = notifier or Notifier()
    key_files = bool(config.keys.api_file or config.keys.admin_file)
    # Only where there is a file to re-read, or a service manager that sends SIGHUP for a reload:
    # elsewhere SIGHUP keeps its usual meaning.
    reload_on_hup = hasattr(signal, "SIGHUP") and (key_files or config.config_file is not None or notifier.enabled)

    def reload() -> None:
        notifier.reloading()
        try:
            if key_files:
                keys.reload()
            if config.config_file is not None:
                gate.reload_settings()
        finally:
            notifier.ready()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if reload_on_hup:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
        if not config.keys.enabled and not binds_loopback(config.host):
            log.warning("no API keys: anyone who can reach %s:%d can use and change every model; "
                        "set LLAMAGATE_API_KEYS", config.host, config.port)
        try:
            # Reported now; looked up again at each load, so installing one needs no restart.
            binary = find_llama_server(config.llama_server, config.runtime_dir)
            log.info("llama-server: %s (from %s)", binary.path, binary.source)
        except LlamagateError as e:
            log.warning("%s", e.message)
        log.info("models: %s", config.models_dir)
        if config.kv_cache_type not in ("", "f16") and not config.flash_attention:
            log.warning("OLLAMA_FLASH_ATTENTION must be enabled to use a quantized OLLAMA_KV_CACHE_TYPE; it applies "
                        "only to models whose table sets flash_attention = true")
        for name, urls in config.upstreams.items():
            log.info("upstream %s: %s", name, ", ".join(urls))
        await gate.prune()
        gate.start()
        try:
            yield
        finally:
            if reload_on_hup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await gate.aclose()

    app = Litestar(
        route_handlers=[*OLLAMA_ROUTES, *OPENAI_ROUTES, *UI_ROUTES, metrics, openapi],
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
        request_max_body_size=METADATA_BODY_LIMIT,
    )
    # Around the router, so that an unknown path needs a key too and a 404 or 405 gets CORS
    # headers, as in Ollama. CORS outside the key check, since it answers a browser's preflight
    # (which carries no key); inside it, what every request must pass before its key is looked at.
    handler = auth_layer(app.asgi_handler, keys)
    handler = host_check_layer(handler, config.host)
    handler = header_limit_layer(handler)
    app.asgi_handler = cors_layer(handler, config.origins)
    # Outermost: a request CORS refuses is counted too. It records at the request's end only.
    app.asgi_handler = exchange_layer(app.asgi_handler, gate.finished)
    return app
