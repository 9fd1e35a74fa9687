"""Existing llama-servers behind a model name (`--upstream NAME=URL`): a pool picked by requests
in flight, a failed server taken out of rotation and probed back in, metadata read from `/props`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import httpx
import msgspec

from supervisor.errors import LlamagateError
from supervisor.httpclient import async_client
from supervisor.models.gguf import FILE_TYPES, GGUFInfo, human_number
from supervisor.models.store import ModelConfig
from supervisor.names import ModelName

log = logging.getLogger("llamagate.upstreams")

PROBE_EVERY = 2.0
_QUANT = re.compile("|".join(sorted((re.escape(q) for q in FILE_TYPES.values()), key=len, reverse=True)), re.I)


class _Settings(msgspec.Struct):
    n_ctx: int = 0


class _Modalities(msgspec.Struct):
    vision: bool = False


class _Props(msgspec.Struct):
    """The parts of llama-server's GET /props that describe its model."""

    model_path: str = ""
    default_generation_settings: _Settings = msgspec.field(default_factory=_Settings)
    total_slots: int = 0
    build_info: str = ""
    chat_template: str = ""
    model_ftype: str = ""  # the quantization, in builds from 2026 on
    modalities: _Modalities = msgspec.field(default_factory=_Modalities)


class _Meta(msgspec.Struct):
    n_params: int = 0
    n_ctx_train: int = 0
    n_embd: int = 0
    size: int = 0


class _ModelEntry(msgspec.Struct):
    id: str = ""
    meta: _Meta | None = None


class _Models(msgspec.Struct):
    """llama-server's GET /v1/models: the sizes that /props leaves out."""

    data: list[_ModelEntry] = []


@dataclass(eq=False)
class Endpoint:
    """One upstream llama-server."""

    name: str
    base_url: str
    api_key: str = ""
    active: int = 0
    served: int = 0
    down: str = ""  # why it is out of rotation; "" while in

    def broken(self, error: Exception) -> LlamagateError:
        """A broken request takes the server out of rotation until a probe finds it again."""
        self.mark_down(f"{type(error).__name__}: {error}")
        return LlamagateError(502, f"upstream llama-server {self.base_url} for {self.name} failed: {error}")

    def mark_down(self, why: str) -> None:
        if not self.down:
            log.warning("[%s] upstream %s out of rotation: %s", self.name, self.base_url, why)
        self.down = why or "unreachable"


class PoolLease:
    """One request's hold on a server of a pool, as the hop sees a target. The request's calls
    (template, generation, tokenize) all go to one server, unless it refuses a connection: then
    the lease moves to another, since nothing reached the first."""

    def __init__(self, pool: Pool, endpoint: Endpoint) -> None:
        self.pool = pool
        self.endpoint = endpoint
        endpoint.active += 1
        endpoint.served += 1

    @property
    def base_url(self) -> str:
        return self.endpoint.base_url

    @property
    def api_key(self) -> str:
        return self.endpoint.api_key

    async def failure(self, error: Exception) -> LlamagateError:
        return self.endpoint.broken(error)

    def failover(self, error: Exception) -> bool:
        """Take the refusing server out of rotation and move to another; False if none is left."""
        self.endpoint.mark_down(f"{type(error).__name__}: {error}")
        try:
            endpoint = self.pool.pick()
        except LlamagateError:
            return False
        self.release()
        self.endpoint = endpoint
        endpoint.active += 1
        endpoint.served += 1
        return True

    def release(self) -> None:
        self.endpoint.active -= 1


@dataclass(eq=False)
class Pool:
    """Every upstream for one model name."""

    name: str
    endpoints: list[Endpoint]
    props: _Props | None = None
    meta: _Meta | None = None

    @classmethod
    def of(cls, name: str, urls: list[str]) -> Pool:
        return cls(name, [Endpoint(name, url.rstrip("/")) for url in urls])

    def pick(self) -> Endpoint:
        """The server with the fewest requests in flight (then the fewest served, so that
        sequential requests alternate); none in rotation is a 503 naming why."""
        up = [e for e in self.endpoints if not e.down]
        if not up:
            reasons = "; ".join(f"{e.base_url}: {e.down}" for e in self.endpoints)
            raise LlamagateError(503, f"no upstream llama-server for {self.name} is reachable ({reasons})")
        return min(up, key=lambda e: (e.active, e.served))

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[PoolLease]:
        lease = PoolLease(self, self.pick())
        try:
            yield lease
        finally:
            lease.release()

    # What a resolved Model reads of its target (see supervisor/models/model.py) -------------

    @property
    def location(self) -> str:
        return ",".join(e.base_url for e in self.endpoints)

    # A projector or adapters are the servers' own business: none loaded by us.
    @property
    def projector(self) -> None:
        return None

    @property
    def adapters(self) -> tuple[()]:
        return ()

    @property
    def draft(self) -> None:
        return None

    @property
    def vision(self) -> bool:
        return bool(self.props and self.props.modalities.vision)

    @property
    def size(self) -> int:
        return self.meta.size if self.meta else 0

    def details(self) -> ModelConfig:
        props, meta = self.props, self.meta
        quant = _QUANT.search(props.model_path.rsplit("/", 1)[-1]) if props else None
        return ModelConfig(
            model_format="gguf",
            model_type=human_number(meta.n_params) if meta and meta.n_params else "",
            # Older builds don't report it: then the file name usually says it.
            file_type=(props.model_ftype if props else "") or (quant.group(0).upper() if quant else ""),
            context_length=(meta.n_ctx_train if meta else 0) or (props.default_generation_settings.n_ctx if props else 0),
            embedding_length=meta.n_embd if meta else 0,
        )

    def info(self, *, verbose: bool = False) -> GGUFInfo:
        """What the server tells of its GGUF: the chat template and the parameter count, as a
        GGUF's metadata would say them (verbose or not, there is no more)."""
        return GGUFInfo(metadata={"tokenizer.chat_template": self.props.chat_template if self.props else ""},
                        parameter_count=self.meta.n_params if self.meta else 0)

    async def _probe(self, client: httpx.AsyncClient, endpoint: Endpoint) -> None:
        try:
            response = await client.get(f"{endpoint.base_url}/health")
            healthy = response.status_code == 200
            why = f"/health answered {response.status_code}"
        except httpx.HTTPError as e:
            healthy, why = False, f"{type(e).__name__}: {e}"
        if healthy and endpoint.down:
            log.info("[%s] upstream %s back in rotation", self.name, endpoint.base_url)
            endpoint.down = ""
        elif not healthy:
            endpoint.mark_down(why)
        if healthy and self.props is None:
            await self._read_metadata(client, endpoint)

    async def _read_metadata(self, client: httpx.AsyncClient, endpoint: Endpoint) -> None:
        try:
            self.props = msgspec.json.decode((await client.get(f"{endpoint.base_url}/props")).content, type=_Props)
            models = msgspec.json.decode((await client.get(f"{endpoint.base_url}/v1/models")).content, type=_Models)
            self.meta = next((m.meta for m in models.data if m.meta), None)
        except (httpx.HTTPError, msgspec.DecodeError) as e:
            log.warning("[%s] could not read %s/props: %s", self.name, endpoint.base_url, e)

    async def watch(self) -> None:
        """Probe every upstream now, then the ones out of rotation every PROBE_EVERY seconds."""
        async with async_client(timeout=5) as client:
            await asyncio.gather(*(self._probe(client, e) for e in self.endpoints))
            while True:
                await asyncio.sleep(PROBE_EVERY)
                await asyncio.gather(*(self._probe(client, e) for e in self.endpoints if e.down or self.props is None))


class Upstreams:
    """Every `--upstream` pool by model name, and the probes that keep them current."""

    def __init__(self, config: dict[str, list[str]]) -> None:
        self.started = datetime.now().astimezone()
        self.pools: dict[str, tuple[ModelName, Pool]] = {}
        for text, urls in config.items():
            name = ModelName.parse(text)
            self.pools[name.display.lower()] = (name, Pool.of(name.display, urls))
        self._tasks: list[asyncio.Task[None]] = []

    def get(self, name: ModelName) -> Pool | None:
        entry = self.pools.get(name.display.lower())
        return entry[1] if entry else None

    def start(self) -> None:
        self._tasks = [asyncio.create_task(pool.watch()) for _, pool in self.pools.values()]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
