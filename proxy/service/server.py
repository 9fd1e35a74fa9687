"""uvicorn's Server as a service: READY=1 once the socket listens, a status line and watchdog pings
from the event loop, and a SIGTERM that drains (requests in flight finish, up to a grace period;
loads are cancelled) and exits 0. A second SIGTERM or SIGINT stops at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from types import FrameType

import uvicorn
from litestar import Litestar

from proxy.gateway import Gateway
from proxy.service.notify import Notifier
from supervisor.config import Config
from supervisor.runners.runner import State

log = logging.getLogger("llamagate.service")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def status_line(gate: Gateway) -> str:
    """What `systemctl status` shows: the models loaded, those loading, or idle."""
    loaded, loading = [], []
    for model, runners in gate.scheduler.loaded():
        ready = any(r.state is State.READY for r in runners)
        (loaded if ready else loading).append(model.name.display)
    parts = []
    if loaded:
        parts.append(f"{len(loaded)} model{'s' if len(loaded) > 1 else ''} loaded: {', '.join(loaded)}")
    if loading:
        parts.append(f"loading {', '.join(loading)}")
    return "; ".join(parts) or "idle"


class _Service(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gate: Gateway, notifier: Notifier) -> None:
        super().__init__(config)
        self.gate = gate
        self.notifier = notifier
        self._beat: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # The lifespan's startup runs first, then the listening socket is bound: only now may a
        # client be told to connect.
        await super().startup(sockets)
        if self.started:
            self.notifier.status(status_line(self.gate))
            self.notifier.ready()
            if self.notifier.enabled:
                self._beat = asyncio.create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        """From the event loop itself, so that a stuck loop stops the pings and the manager acts."""
        interval = self.notifier.watchdog_interval
        pinged = 0.0
        while True:
            now = time.monotonic()
            # uvloop's timers tick in whole milliseconds, so a sleep of `interval` may end a
            # little before time.monotonic() says it has passed: without the slack every other
            # ping would be skipped.
            if interval is not None and now - pinged >= interval * 0.95:
                self.notifier.watchdog()
                pinged = now
            if self.should_exit:
                self.notifier.status(f"stopping: {len(self.server_state.tasks)} requests in flight")
            else:
                self.notifier.status(status_line(self.gate))
            await asyncio.sleep(min(interval or 1.0, 1.0))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Loads first: a request waiting for one would hold the drain until the grace ends.
        self.gate.drain()
        # uvicorn stops accepting, closes idle connections, waits for the rest up to
        # timeout_graceful_shutdown and then cancels them; the lifespan's end stops the runners.
        await super().shutdown(sockets)
        if self._beat is not None:
            self._beat.cancel()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own raises the signal again once drained, to die of it: we exit 0 instead,
        # since a drained shutdown is a clean one.
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info("%s: draining (up to %.0fs), again to stop at once", signal.Signals(sig).name,
                     self.config.timeout_graceful_shutdown or 0)
            self.notifier.stopping()
            self.should_exit = True
            return
        log.warning("%s again: stopping now", signal.Signals(sig).name)
        self.gate.scheduler.kill()
        logging.shutdown()
        os._exit(128 + sig)


def run(app: Litestar, config: Config, notifier: Notifier, drain_timeout: float) -> None:
    server = _Service(uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop="auto",
        http="httptools",
        # Each request's line comes from proxy/exchange.py, with its id, model and tokens.
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=drain_timeout,
        # uvicorn answers 503 to a request that finds `limit_concurrency` connections open counting
        # its own, so one more lets exactly max_connections be served. An idle kept-alive connection
        # is closed after the timeout (only between requests: a long generation is never cut by it).
        limit_concurrency=config.max_connections + 1 if config.max_connections else None,
        timeout_keep_alive=config.keepalive_timeout,
    ), app.state.gate, notifier)
    server.run()
