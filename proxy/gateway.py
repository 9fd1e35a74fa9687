"""The composition root: the server's long-lived parts, built once from the Config and shared by
every route."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from litestar import Request

from proxy.activity import Activity
from proxy.disconnect import INFERENCE
from proxy.exchange import Exchange, log_line
from proxy.llama.client import Hop
from proxy.llama.lease import Inference
from proxy.metrics import Metrics
from proxy.remote import Forwarder
from supervisor.config import Config
from supervisor.errors import LlamagateError, bad_request
from supervisor.httpclient import tls_context
from supervisor.model_tables import ModelTables
from supervisor.models.catalog import Catalog
from supervisor.models.model import LocalFiles, Model
from supervisor.models.remote import Upstreams
from supervisor.models.store import Store
from supervisor.pull.inflight import Pulls
from supervisor.pull.push import Pusher
from supervisor.pull.registry import Puller
from supervisor.runners.scheduler import LoadOptions, Scheduler
from supervisor.runtime.binary import find_llama_server

log = logging.getLogger("llamagate")


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.upstreams = Upstreams(config.upstreams)
        self.store = Store(config.models_dir)
        self.catalog = Catalog(self.store, self.upstreams)
        self.metrics = Metrics()
        self.tables = ModelTables(config.models)
        self.scheduler = Scheduler(config, events=self.metrics, tables=self.tables, find=self._gguf,
                                   pin=self.store.pinned)
        self.metrics.watch(self.scheduler)
        self.activity = Activity()
        self.hop = Hop()
        self.inference = Inference(self.scheduler, self.hop)
        self.remote = Forwarder()
        self.puller = Puller(self.store, config.registry_mirrors)
        self.pulls = Pulls(self.puller)
        self.pusher = Pusher(self.store, config.registry_mirrors, self.puller.client)
        self._preloading: asyncio.Task[None] | None = None
        self._discovering: asyncio.Task[None] | None = None

    def _gguf(self, name: str) -> Path:
        """The GGUF of a stored model (a draft_model given by name)."""
        model = self.catalog.require(name)
        if not isinstance(model.target, LocalFiles):
            raise bad_request(f"draft model {name} is not a model in the store")
        return model.target.model

    def finished(self, x: Exchange) -> None:
        """A request's answer is sent (proxy/exchange.py): logged, counted, and kept if it was inference."""
        log_line(x)
        self.metrics.finished(x)
        if x.route in INFERENCE:
            self.activity.add(x)

    async def prune(self) -> None:
        """The store's leftovers of a killed process, removed at startup as Ollama does (unless
        OLLAMA_NOPRUNE), in a thread before the first request."""
        if self.config.noprune:
            return
        removed = await asyncio.to_thread(self.store.prune)
        if removed:
            log.info("pruned %d leftover file(s) from the store", removed)

    def start(self) -> None:
        tls_context()  # built now rather than inside the first model load
        self.upstreams.start()
        self._discovering = asyncio.create_task(self._discover())
        self._preloading = asyncio.create_task(self._preload())

    async def _discover(self) -> None:
        """The GPUs of the llama-server found now, listed (and logged) at startup, so that the
        default num_ctx and /api/ps know them before the first load. With none found, the first
        load downloads one and lists them then."""
        try:
            binary = find_llama_server(self.config.llama_server, self.config.runtime_dir)
        except LlamagateError:
            return
        await self.scheduler.devices.of(binary.path)

    async def num_ctx(self, model: Model, requested: int | None) -> int:
        """The request's num_ctx (Scheduler.num_ctx), once the startup's GPU listing is in: the
        default depends on the VRAM, and a request in the first moments must not get the
        no-GPU default the rest of its model's life."""
        if self._discovering is not None and not self._discovering.done():
            await asyncio.shield(self._discovering)
        return self.scheduler.num_ctx(model, requested)

    async def _preload(self) -> None:
        """In the background, the server answering meanwhile: the GPUs listed, then each model
        whose table says `preload` loaded, one after another (a failure is logged, not fatal)."""
        assert self._discovering is not None
        await asyncio.shield(self._discovering)
        for name, table in self.tables.items():
            if not table.preload:
                continue
            try:
                model = await self.catalog.resolve(name)
                async with self.scheduler.lease(model, LoadOptions()):
                    pass
                log.info("preloaded %s", name)
            except LlamagateError as e:
                log.warning("preload of %s failed: %s", name, e.message)

    def reload_settings(self) -> None:
        """Read the config file and environment again (SIGHUP): new model tables apply from each
        model's next load; a bad file changes nothing."""
        try:
            fresh = self.config.reload()
        except ValueError as e:
            log.warning("settings not reloaded, the old ones stay in force: %s", e)
            return
        self.tables.replace(fresh.models)
        log.info("settings reloaded: %d model table(s) from %s", len(fresh.models), fresh.config_file)

    def drain(self) -> None:
        """Shutdown begins (SIGTERM): the requests in flight go on, loads stop (supervisor/runners)."""
        self.scheduler.close()

    async def aclose(self) -> None:
        for task in (self._preloading, self._discovering):
            if task:
                task.cancel()
        await self.upstreams.aclose()
        await self.scheduler.shutdown()
        await self.hop.aclose()
        await self.remote.aclose()
        await self.pulls.aclose()
        await self.puller.aclose()


def gate_of(request: Request) -> Gateway:
    return request.app.state.gate
