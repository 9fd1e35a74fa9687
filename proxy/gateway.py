"""The server's long-lived parts, built once from the Config and shared by every route."""

from __future__ import annotations

from supervisor.config import Config
from supervisor.httpclient import tls_context
from supervisor.pull.registry import Puller
from supervisor.runners.scheduler import Scheduler
from supervisor.models.store import Store, StoredModel
from supervisor.models.remote import RemoteModel, Upstreams

from proxy.llama.lease import Inference
from proxy.semantics import ModelDefaults
from proxy.llama.client import Upstream


def model_defaults(model: StoredModel | RemoteModel) -> ModelDefaults:
    """What the model's Modelfile layers (SYSTEM, PARAMETER, MESSAGE) add to every request."""
    return ModelDefaults(
        system=model.system,
        params=model.params,
        messages=tuple((m.role, m.content) for m in model.messages),
    )


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.upstreams = Upstreams(config.upstreams)
        self.store = Store(config.models_dir, self.upstreams)
        self.scheduler = Scheduler(config)
        self.upstream = Upstream()
        self.inference = Inference(self.scheduler, self.upstream)
        self.puller = Puller(self.store, config.registry_mirrors)

    def start(self) -> None:
        tls_context()  # built now rather than inside the first model load
        self.upstreams.start()

    async def aclose(self) -> None:
        await self.upstreams.aclose()
        await self.scheduler.shutdown()
        await self.upstream.aclose()
        await self.puller.aclose()
