"""Model → a ready runner: one runner per model file, shared starts, load options, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from supervisor.binary import Binary, ensure_llama_server, find_llama_server
from supervisor.config import Config
from supervisor.gguf import embedding_pooling
from supervisor.runner import LaunchSpec, Runner, State
from supervisor.store import StoredModel

log = logging.getLogger("llamagate.scheduler")


@dataclass(frozen=True)
class LoadOptions:
    """The request options that shape the process rather than one generation (None = default)."""

    num_ctx: int | None = None
    keep_alive: float | None = None
    embedding: bool = False


class Scheduler:
    def __init__(self, config: Config) -> None:
        self.config = config
        # Keyed by model file, so aliases made with `cp` share one process, and by purpose, so
        # one model can serve completions and embeddings at once.
        self._runners: dict[tuple[Path, bool], Runner] = {}
        # The model each runner last served, for /api/ps.
        self._served: dict[tuple[Path, bool], StoredModel] = {}
        self._binary: Binary | None = None

    def binary(self) -> Binary:
        """Found once; a failure is not remembered, so installing llama-server later needs no
        restart of ours."""
        if self._binary is None:
            self._binary = find_llama_server(self.config.llama_server, self.config.runtime_dir)
        return self._binary

    def num_ctx(self, model: StoredModel, requested: int | None) -> int:
        """Request, else the model's PARAMETER, else the server default; capped by training."""
        num_ctx = requested or int(model.params.get("num_ctx") or 0) or self.config.context_length
        trained = model.config.context_length
        if trained:
            num_ctx = min(num_ctx, trained)
        return max(num_ctx, 4)

    @asynccontextmanager
    async def lease(self, model: StoredModel, load: LoadOptions) -> AsyncIterator[Runner]:
        """A ready runner for `model`, held for the duration of one request."""
        spec = LaunchSpec(
            binary=(await ensure_llama_server(self.config)).path,
            model_path=model.model_path,
            num_ctx=self.num_ctx(model, load.num_ctx),
            threads=self.config.threads,
            parallel=self.config.num_parallel,
            embedding=load.embedding,
            pooling=embedding_pooling(model.model_path) if load.embedding else "",
            projector=None if load.embedding else model.projector_path,
            adapters=model.adapter_paths,
        )
        key = (spec.model_path, load.embedding)
        runner = self._runners.get(key)
        if runner is None:
            name = model.name.display + (" (embedding)" if load.embedding else "")
            runner = self._runners[key] = Runner(
                name, self.config.keep_alive, self.config.load_timeout, self.config.stop_grace
            )
        await runner.acquire(spec, load.keep_alive)
        self._served[key] = model
        try:
            yield runner
        finally:
            await runner.release()

    async def unload(self, model: StoredModel) -> None:
        for embedding in (False, True):
            runner = self._runners.get((model.model_path, embedding))
            if runner is not None:
                await runner.unload()

    def loaded(self) -> list[tuple[StoredModel, Runner]]:
        """Runners with a process (loading or ready), with the model each last served."""
        return [(self._served[key], r) for key, r in self._runners.items()
                if key in self._served and r.state in (State.STARTING, State.READY)]

    def runners(self) -> list[Runner]:
        return list(self._runners.values())

    async def shutdown(self) -> None:
        await asyncio.gather(*(r.stop() for r in self._runners.values()), return_exceptions=True)
