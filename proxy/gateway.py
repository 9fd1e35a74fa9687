"""The composition root: the server's long-lived parts, built once from the Config and shared by
every route."""

from __future__ import annotations

from litestar import Request

from proxy.activity import Activity
from proxy.disconnect import INFERENCE
from proxy.exchange import Exchange, log_line
from proxy.llama.client import Hop
from proxy.llama.lease import Inference
from proxy.metrics import Metrics
from supervisor.config import Config
from supervisor.httpclient import tls_context
from supervisor.models.catalog import Catalog
from supervisor.models.remote import Upstreams
from supervisor.models.store import Store
from supervisor.pull.inflight import Pulls
from supervisor.pull.registry import Puller
from supervisor.runners.scheduler import Scheduler


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.upstreams = Upstreams(config.upstreams)
        self.store = Store(config.models_dir)
        self.catalog = Catalog(self.store, self.upstreams)
        self.metrics = Metrics()
        self.scheduler = Scheduler(config, events=self.metrics)
        self.metrics.watch(self.scheduler)
        self.activity = Activity()
        self.hop = Hop()
        self.inference = Inference(self.scheduler, self.hop)
        self.puller = Puller(self.store, config.registry_mirrors)
        self.pulls = Pulls(self.puller)

    def finished(self, x: Exchange) -> None:
        """A request's answer is sent (proxy/exchange.py): logged, counted, and kept if it was inference."""
        log_line(x)
        self.metrics.finished(x)
        if x.route in INFERENCE:
            self.activity.add(x)

    def start(self) -> None:
        tls_context()  # built now rather than inside the first model load
        self.upstreams.start()

    def drain(self) -> None:
        """Shutdown begins (SIGTERM): the requests in flight go on, loads stop (supervisor/runners)."""
        self.scheduler.close()

    async def aclose(self) -> None:
        await self.upstreams.aclose()
        await self.scheduler.shutdown()
        await self.hop.aclose()
        await self.pulls.aclose()
        await self.puller.aclose()


def gate_of(request: Request) -> Gateway:
    return request.app.state.gate
