"""Model → a ready runner: one runner per model file, shared starts, load options, room for a
load (model count and memory, evicting idle runners), the queue limit, and shutdown."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from supervisor.runners import memory
from supervisor.runtime.install import ensure_llama_server
from supervisor.runtime.devices import Device, Devices, default_context_length
from supervisor.config import Config
from supervisor.errors import LlamagateError, not_found
from supervisor.models.gguf import embedding_pooling
from supervisor.models.model import LocalFiles, Model
from supervisor.model_tables import ModelTables, is_path
from supervisor.models.remote import Pool, PoolLease
from supervisor.names import ModelName
from supervisor.runners.events import RunnerEvents
from supervisor.runners.launch import LaunchSpec
from supervisor.runners.runner import SHUTTING_DOWN, Runner, State

log = logging.getLogger("llamagate.scheduler")

# Ollama's text, two spaces included: clients match on it.
SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """The request options that shape the process rather than one generation (None = default).
    Keyword-only: several fields share a type, and a positional mix-up starts a wrong process."""

    num_ctx: int | None = None
    keep_alive: float | None = None
    num_gpu: int | None = None
    num_thread: int | None = None
    num_batch: int | None = None
    main_gpu: int | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding: bool = False
    # Ollama's `shift` (default true); an embedding runner never generates, so never shifts.
    context_shift: bool = True


def _option(requested: int | None, model: Model, name: str, table: int | None = None) -> int | None:
    """A load option from the request, else the model's config table, else its PARAMETER, else None."""
    if requested is not None:
        return requested
    if table is not None:
        return table
    value = model.params.get(name)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _flag(requested: bool | None, model: Model, name: str) -> bool | None:
    """A boolean load option from the request, else the model's PARAMETER, else None."""
    if requested is not None:
        return requested
    value = model.params.get(name)
    return value if isinstance(value, bool) else None


Pin = Callable[[Iterable[Path]], AbstractAsyncContextManager[None]]


class Scheduler:
    """`tables` are the config file's model tables, read at each load (a reload swaps them);
    `find` resolves a draft_model given by name to its GGUF; `pin` holds a request's model files
    in the store (Store.pinned), so that a delete racing a runner's start leaves them."""

    def __init__(self, config: Config, events: RunnerEvents | None = None, tables: ModelTables | None = None,
                 find: Callable[[str], Path] | None = None, pin: Pin | None = None) -> None:
        self.config = config
        self._pin = pin or (lambda _files: nullcontext())
        self.tables = tables or ModelTables(config.models)
        self._find = find
        self._events = events
        # Keyed by model file, so aliases made with `cp` share one process, and by purpose, so
        # one model can serve completions and embeddings at once.
        self._runners: dict[tuple[Path, bool], Runner] = {}
        # The model each runner last served, for /api/ps.
        self._served: dict[tuple[Path, bool], Model] = {}
        # One load is admitted at a time, in arrival order; `_changed` wakes the one waiting for
        # room when a runner goes idle or lets its memory go.
        self._admission = asyncio.Lock()
        self._changed = asyncio.Event()
        # The queued requests (OLLAMA_MAX_QUEUE's) by the runner they wait for.
        self._queued: Counter[Runner] = Counter()
        self._closed = False  # see `close`
        self._rpc = {ModelName.parse(name).display.lower(): tuple(workers) for name, workers in config.rpc.items()}
        self.devices = Devices()

    def max_loaded(self) -> int:
        """OLLAMA_MAX_LOADED_MODELS; 0 is Ollama's 3 per GPU (3 without one)."""
        return self.config.max_loaded_models or 3 * max(len(self.devices.current), 1)

    def num_ctx(self, model: Model, requested: int | None) -> int:
        """Request, else the model's config table, else its PARAMETER, else OLLAMA_CONTEXT_LENGTH,
        else the default for the VRAM found; capped by training."""
        table = self.tables.of(model.name).num_ctx
        num_ctx = (requested or table or int(model.params.get("num_ctx") or 0) or self.config.context_length
                   or default_context_length(self.devices.current, self.config.gpu_overhead))
        trained = model.context_length
        if trained:
            num_ctx = min(num_ctx, trained)
        return max(num_ctx, 4)

    def default_keep_alive(self, model: Model) -> float:
        """How long the model stays loaded when no request says: its table's keep_alive, forever
        for a preloaded one, else OLLAMA_KEEP_ALIVE."""
        table = self.tables.of(model.name)
        if table.keep_alive is not None:
            return table.keep_alive
        return math.inf if table.preload else self.config.keep_alive

    def _draft(self, name: str | None) -> Path | None:
        if not name:
            return None
        if is_path(name):
            return Path(name).expanduser()
        if self._find is None:
            raise LlamagateError(500, f"draft_model {name}: no store to look it up in")
        return self._find(name)

    def _kv_cache(self, flash_attention: bool | None) -> str:
        """OLLAMA_KV_CACHE_TYPE as Ollama applies it (llm/server.go): f16 always, a quantized type
        only with flash attention turned on, since llama.cpp quantizes V only with it."""
        kv = self.config.kv_cache_type
        return kv if kv == "f16" or flash_attention else ""

    async def launch_spec(self, model: Model, files: LocalFiles, load: LoadOptions) -> LaunchSpec:
        table = self.tables.of(model.name)
        flash_attention = self.config.flash_attention if table.flash_attention is None else table.flash_attention
        kv = self._kv_cache(flash_attention)
        binary = (await ensure_llama_server(self.config)).path
        await self.devices.of(binary)  # the default num_ctx depends on them
        return LaunchSpec(
            binary=binary,
            model_path=files.model,
            num_ctx=self.num_ctx(model, load.num_ctx),
            threads=_option(load.num_thread, model, "num_thread", table.threads) or self.config.threads,
            parallel=table.num_parallel or self.config.num_parallel,
            gpu_layers=_option(load.num_gpu, model, "num_gpu", table.gpu_layers),
            batch=_option(load.num_batch, model, "num_batch"),
            main_gpu=_option(load.main_gpu, model, "main_gpu"),
            use_mmap=_flag(load.use_mmap, model, "use_mmap"),
            use_mlock=_flag(load.use_mlock, model, "use_mlock"),
            flash_attention=flash_attention,
            cache_type_k=table.cache_type_k or kv,
            cache_type_v=table.cache_type_v or kv,
            draft=self._draft(table.draft_model) or files.draft,
            draft_max=table.draft_max,
            draft_min=table.draft_min,
            extra_args=table.extra_args,
            rpc=self._rpc.get(model.name.display.lower(), ()),
            embedding=load.embedding,
            context_shift=load.context_shift and not load.embedding,
            pooling=embedding_pooling(files.model) if load.embedding else "",
            projector=None if load.embedding else files.projector,
            adapters=files.adapters,
        )

    @asynccontextmanager
    async def lease(self, model: Model, load: LoadOptions) -> AsyncIterator[Runner | PoolLease]:
        """What serves `model`, held for one request: a ready runner of its files, or a server
        of its `--upstream` pool. Here, and in `unload`, the scheduler tells the two targets apart;
        nobody else needs to."""
        match model.target:
            case Pool() as pool:
                async with pool.lease() as lease:
                    yield lease
            case LocalFiles() as files:
                async with self._pin(files.files):
                    if not files.model.is_file():  # deleted since the name was resolved
                        raise not_found(f"model '{model.name.display}' not found")
                    async with self._runner(model, files, load) as runner:
                        yield runner

    @asynccontextmanager
    async def _runner(self, model: Model, files: LocalFiles, load: LoadOptions) -> AsyncIterator[Runner]:
        spec = await self.launch_spec(model, files, load)
        key = (spec.model_path, load.embedding)
        runner = self._runners.get(key)
        if runner is None:
            name = model.name.display + (" (embedding)" if load.embedding else "")
            runner = self._runners[key] = Runner(
                name, self.config.keep_alive, self.config.load_timeout, self.config.stop_grace,
                hang_timeout=self.config.hang_timeout, admit=self._admit, on_change=self._changed.set,
                model=model.name.display, embedding=load.embedding, events=self._events,
            )
        if self._closed and not runner.serving(spec):
            raise LlamagateError(503, SHUTTING_DOWN)
        # Requests that need a load or a restart, or wait behind one that does, queue, up to
        # OLLAMA_MAX_QUEUE; requests for a runner already serving go straight to it, as in Ollama.
        queued = not runner.serving(spec) or runner.waiting > 0
        if queued:
            if self.queued() >= self.config.max_queue:
                raise LlamagateError(503, SERVER_BUSY)
            self._queued[runner] += 1
        # Named before its first load, so that /api/ps shows it loading.
        self._served.setdefault(key, model)
        try:
            await runner.acquire(spec, load.keep_alive, self.default_keep_alive(model))
        finally:
            if queued:
                self._queued[runner] -= 1
        self._served[key] = model
        try:
            try:
                yield runner
            except BaseException:
                await runner.release()
                raise
            await runner.release(served=True)
        finally:
            # To a client a model is one thing: its other runner keeps the same time.
            if other := self._runners.get((spec.model_path, not load.embedding)):
                await asyncio.shield(other.keep(load.keep_alive))

    @asynccontextmanager
    async def _admit(self, runner: Runner, spec: LaunchSpec) -> AsyncIterator[LaunchSpec]:
        """Held by a runner about to start: yields once it fits, with the spec to start (its GPU
        chosen), and the runner marks itself as holding memory before the next load is considered."""
        async with self._admission:
            yield await self._make_room(runner, spec)

    def _footprints(self, runner: Runner) -> tuple[list[Runner], list[memory.Estimate], list[memory.Estimate]]:
        """The other runners holding memory, and the footprints of those loaded and starting."""
        held = {r: r.holds for r in self._runners.values() if r is not runner and r.holds is not None}
        loaded, starting = [], []
        for r, spec in held.items():
            if (footprint := r.footprint) is not None:
                (loaded if r.serving(spec) else starting).append(footprint)
        return list(held), loaded, starting

    async def _make_room(self, runner: Runner, spec: LaunchSpec) -> LaunchSpec:
        """Evict idle runners, shortest remaining keep_alive first, until the new one fits under
        OLLAMA_MAX_LOADED_MODELS, on the GPUs and in RAM; wait while only busy runners are in
        the way. Returns the spec with the GPU chosen for it, its memory predicted on the runner."""
        while True:
            self._changed.clear()
            # Listed again (where the build has GPUs): what other processes, and runners just
            # stopped, left free.
            devices = await self.devices.of(spec.binary, fresh=True)
            others, loaded, starting = self._footprints(runner)
            overhead = self.config.gpu_overhead
            free = memory.gpu_free(devices, overhead, loaded, starting)
            if spec.gpu_layers != 0 and not self.config.sched_spread:
                spec = replace(spec, device=memory.single_gpu(spec.model_path, spec.ctx_total, free) or "")
            need = memory.estimate(spec.model_path, spec.ctx_total,
                                   {spec.device: free[spec.device]} if spec.device else free, spec.gpu_layers)
            # The most it could put on the GPUs, with none of our other runners loaded.
            best = memory.estimate(spec.model_path, spec.ctx_total, memory.gpu_free(devices, overhead),
                                   spec.gpu_layers)
            room = len(others) < self.max_loaded()
            on_gpus = memory.vram_fits(need, best, free)
            in_ram = memory.fits(need, loaded=loaded, starting=starting, available=memory.available_bytes(),
                                 budget=self.config.max_memory)
            runner.predicted = need
            if room and on_gpus and in_ram:
                return spec
            for victim in sorted((r for r in others if r.idle), key=lambda r: r.expires_at):
                reason = "model limit" if not room else "GPU memory" if not on_gpus else "memory"
                log.info("[%s] needs room (%s): evicting %s", runner.name, reason, victim.name)
                # Shielded: a load abandoned now (its clients left) must not leave the victim half stopped.
                if await asyncio.shield(victim.evict()):
                    break
            else:
                if room and not any(not r.idle for r in others):
                    log.warning("[%s] may not fit in memory (needs ~%d MB), loading anyway: nothing else to "
                                "unload", runner.name, need.total >> 20)
                    return spec
                log.info("[%s] waiting for a busy model to finish before loading", runner.name)
                await self._changed.wait()

    async def unload(self, model: Model) -> None:
        """Stop the runners of the model's file; an `--upstream` pool's servers are not ours."""
        match model.target:
            case LocalFiles(model=path):
                for embedding in (False, True):
                    if runner := self._runners.get((path, embedding)):
                        await runner.unload()

    def loaded(self) -> list[tuple[Model, list[Runner]]]:
        """Models with a process (loading or ready), a load under way or requests queued, each with its
        runners (completions first, then embeddings) and as the model its completion runner, else
        its other one, last served."""
        models: dict[Path, tuple[Model, list[Runner]]] = {}
        for key, runner in sorted(self._runners.items(), key=lambda item: item[0][1]):
            shown = runner.state in (State.STARTING, State.READY) or runner.loading_since or self._queued[runner]
            if key in self._served and shown:
                models.setdefault(key[0], (self._served[key], []))[1].append(runner)
        return list(models.values())

    def queued(self, runner: Runner | None = None) -> int:
        """Requests waiting in the queue (OLLAMA_MAX_QUEUE's), all of them or `runner`'s."""
        return self._queued.total() if runner is None else self._queued[runner]

    def runners(self) -> list[Runner]:
        return list(self._runners.values())

    def gpus(self) -> list[tuple[Device, int]]:
        """Each GPU of the build in use (as last listed), with the bytes our runners hold on it."""
        footprints = [f for r in self._runners.values() if (f := r.footprint) is not None]
        return [(d, sum(f.vram.get(d.name, 0) for f in footprints)) for d in self.devices.current]

    def close(self) -> None:
        """Shutdown begins: runners already serving go on with the requests in flight, but no load
        starts any more and the loads under way are cancelled."""
        self._closed = True
        for runner in self._runners.values():
            runner.close()

    def kill(self) -> None:
        """Shutdown at once (a second signal): every process is killed, nothing waited for."""
        for runner in self._runners.values():
            runner.kill()

    async def shutdown(self) -> None:
        await asyncio.gather(*(r.stop() for r in self._runners.values()), return_exceptions=True)
