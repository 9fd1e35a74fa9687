"""Existing servers behind a model name (`--upstream NAME=URL`): llama-servers, or Ollama-API servers
(another llamagate, an Ollama) that serve the model under that name; a pool picked by requests in
flight, a failed server taken out of rotation and probed back in, metadata read from llama-server's
`/props` or the Ollama-API server's `/api/tags`."""

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


class _Version(msgspec.Struct):
    """GET /api/version: what an Ollama-API server answers and a llama-server doesn't (404)."""

    version: str


class _Details(msgspec.Struct):
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    context_length: int = 0
    embedding_length: int = 0


class _Listed(msgspec.Struct):
    name: str = ""
    size: int = 0
    digest: str = ""
    details: _Details = msgspec.field(default_factory=_Details)
    capabilities: list[str] | None = None


class _Tags(msgspec.Struct):
    """An Ollama-API server's GET /api/tags: what it tells of the model it serves for us."""

    models: list[_Listed] = []


async def speaks_ollama(client: httpx.AsyncClient, base_url: str) -> bool:
    """Whether the server at base_url answers Ollama's API: a llama-server has no /api/version
    (llama.cpp removed its /api routes in April 2026). A connection error is raised."""
    response = await client.get(f"{base_url}/api/version")
    try:
        return response.status_code == 200 and bool(msgspec.json.decode(response.content, type=_Version).version)
    except msgspec.DecodeError:
        return False


@dataclass(eq=False)
class Endpoint:
    """One upstream llama-server."""

    name: str
    base_url: str
    api_key: str = ""
    active: int = 0
    served: int = 0
    down: str = ""  # why it is out of rotation; "" while in
    ollama: bool | None = None  # an Ollama-API server rather than a llama-server; None until it answered

    @property
    def kind(self) -> str:
        return "Ollama-API server" if self.ollama else "llama-server"

    def broken(self, error: Exception) -> LlamagateError:
        """A broken request takes the server out of rotation until a probe finds it again."""
        self.mark_down(f"{type(error).__name__}: {error}")
        return LlamagateError(502, f"upstream {self.kind} {self.base_url} for {self.name} failed: {error}")

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
    listed: _Listed | None = None  # the model in an Ollama-API server's /api/tags

    @property
    def ollama(self) -> bool:
        """Whether the pool's servers speak Ollama's API (requests are then passed on in the
        client's dialect, proxy/remote.py); a pool is one kind, so its first known server says."""
        return next((e.ollama for e in self.endpoints if e.ollama is not None), False)

    async def identify(self) -> bool:
        """`ollama`, asking the servers first if none has answered yet (a request that came
        before the first probe did)."""
        if all(e.ollama is None for e in self.endpoints):
            async with async_client(timeout=5) as client:
                await asyncio.gather(*(self._identify(client, e) for e in self.endpoints), return_exceptions=True)
        return self.ollama

    async def _identify(self, client: httpx.AsyncClient, endpoint: Endpoint) -> None:
        endpoint.ollama = await speaks_ollama(client, endpoint.base_url)

    @classmethod
    def of(cls, name: str, urls: list[str]) -> Pool:
        return cls(name, [Endpoint(name, url.rstrip("/")) for url in urls])

    def pick(self) -> Endpoint:
        """The server with the fewest requests in flight (then the fewest served, so that
        sequential requests alternate); none in rotation is a 503 naming why."""
        up = [e for e in self.endpoints if not e.down]
        if not up:
            raise self.unreachable()
        return min(up, key=lambda e: (e.active, e.served))

    def unreachable(self) -> LlamagateError:
        """The 503 of a pool with no server in rotation, naming each and why it is out."""
        reasons = "; ".join(f"{e.base_url}: {e.down}" for e in self.endpoints)
        kind = "Ollama-API server" if self.ollama else "llama-server"
        return LlamagateError(503, f"no upstream {kind} for {self.name} is reachable ({reasons})")

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
        if self.listed:
            return self.listed.size
        return self.meta.size if self.meta else 0

    def details(self) -> ModelConfig:
        if listed := self.listed:
            d = listed.details
            return ModelConfig(model_format="gguf", model_family=d.family, model_families=d.families,
                               model_type=d.parameter_size, file_type=d.quantization_level,
                               context_length=d.context_length, embedding_length=d.embedding_length)
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
        # An Ollama has no /health: its /api/version says it is up.
        path = "/api/version" if endpoint.ollama else "/health"
        try:
            if endpoint.ollama is None:
                await self._identify(client, endpoint)
                path = "/api/version" if endpoint.ollama else "/health"
            response = await client.get(f"{endpoint.base_url}{path}")
            healthy = response.status_code == 200
            why = f"{path} answered {response.status_code}"
        except httpx.HTTPError as e:
            healthy, why = False, f"{type(e).__name__}: {e}"
        if healthy and endpoint.ollama != self.ollama:
            other = "Ollama-API server" if self.ollama else "llama-server"
            healthy, why = False, f"a {endpoint.kind} in a pool of {other}s"
        if healthy and endpoint.down:
            log.info("[%s] upstream %s back in rotation", self.name, endpoint.base_url)
            endpoint.down = ""
        elif not healthy:
            endpoint.mark_down(why)
        if healthy and not self.described:
            await self._read_metadata(client, endpoint)

    @property
    def described(self) -> bool:
        return (self.listed if self.ollama else self.props) is not None

    async def _read_metadata(self, client: httpx.AsyncClient, endpoint: Endpoint) -> None:
        if endpoint.ollama:
            try:
                tags = msgspec.json.decode((await client.get(f"{endpoint.base_url}/api/tags")).content, type=_Tags)
            except (httpx.HTTPError, msgspec.DecodeError) as e:
                log.warning("[%s] could not read %s/api/tags: %s", self.name, endpoint.base_url, e)
                return
            wanted = ModelName.parse(self.name).display.lower()
            self.listed = next((m for m in tags.models if ModelName.parse(m.name).display.lower() == wanted), None)
            if self.listed is None:
                log.warning("[%s] %s does not list %s", self.name, endpoint.base_url, self.name)
            return
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
                await asyncio.gather(*(self._probe(client, e) for e in self.endpoints if e.down or not self.described))


def remote_config(allowed: list[str], host: str, model: str) -> ModelConfig:
    """The config of a model that `host`, an Ollama-API server, serves as `model` (/api/create
    with `remote_host`): its URL normalized as Ollama does (http and port 11434 unless given),
    and only for a host that OLLAMA_REMOTES allows, else any client could point this server at
    any address."""
    url = host.strip() if "://" in host else f"http://{host.strip()}"
    if url == "http://ollama.com":
        url = "https://ollama.com:443"
    try:
        parts = httpx.URL(url)
    except httpx.InvalidURL:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.host:
        raise LlamagateError(400, f"bad remote: {host}")
    if parts.host.lower() not in allowed:
        raise LlamagateError(400, f"this server cannot run this remote model: {parts.host} is not in OLLAMA_REMOTES "
                                  f"({','.join(allowed) or 'empty'})")
    port = parts.port or 11434
    return ModelConfig(model_format="gguf", remote_host=f"{parts.scheme}://{parts.host}:{port}",
                       remote_model=ModelName.parse(model).display)


class Upstreams:
    """Every `--upstream` pool by model name, the pools of models made with `remote_host` (one
    server each, by server and name there), and the probes that keep them current."""

    def __init__(self, config: dict[str, list[str]]) -> None:
        self.started = datetime.now().astimezone()
        self.pools: dict[str, tuple[ModelName, Pool]] = {}
        for text, urls in config.items():
            name = ModelName.parse(text)
            self.pools[name.display.lower()] = (name, Pool.of(name.display, urls))
        self._tasks: list[asyncio.Task[None]] = []
        self._hosted: dict[tuple[str, str], Pool] = {}

    def get(self, name: ModelName) -> Pool | None:
        entry = self.pools.get(name.display.lower())
        return entry[1] if entry else None

    def hosted(self, config: ModelConfig) -> Pool:
        """The pool of a stored remote model, its probes started with its first use."""
        key = (config.remote_host, config.remote_model)
        if (pool := self._hosted.get(key)) is None:
            pool = self._hosted[key] = Pool(config.remote_model, [Endpoint(config.remote_model, config.remote_host,
                                                                          ollama=True)])
            with contextlib.suppress(RuntimeError):  # no event loop: a listing outside the server
                self._tasks.append(asyncio.get_running_loop().create_task(pool.watch()))
        return pool

    def start(self) -> None:
        self._tasks = [asyncio.create_task(pool.watch()) for _, pool in self.pools.values()]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
