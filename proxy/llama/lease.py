"""From a resolved model to llama-server's stream: lease a ready runner, send, and time it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec

from proxy.llama.client import Upstream
from supervisor.runners.runner import Runner
from supervisor.runners.scheduler import LoadOptions, Scheduler
from supervisor.models.store import StoredModel
from supervisor.models.remote import Lease, RemoteModel

T = TypeVar("T")


@dataclass
class Timer:
    """A request's clock: total time from arrival, load time until a runner was ready."""

    started: int = field(default_factory=time.monotonic_ns)
    load_ns: int = 0

    def total_ns(self) -> int:
        return time.monotonic_ns() - self.started


class Inference:
    def __init__(self, scheduler: Scheduler, upstream: Upstream) -> None:
        self.scheduler = scheduler
        self.upstream = upstream

    @asynccontextmanager
    async def runner(
        self, model: StoredModel | RemoteModel, load: LoadOptions, timer: Timer
    ) -> AsyncIterator[Runner | Lease]:
        """A leased runner for several calls (tokenize, then generate), its wait timed as load."""
        async with self.scheduler.lease(model, load) as runner:
            timer.load_ns = timer.total_ns()
            yield runner

    async def stream(
        self,
        model: StoredModel | RemoteModel,
        load: LoadOptions,
        path: str,
        body: msgspec.Struct,
        chunk_type: type[T],
        timer: Timer,
    ) -> AsyncIterator[T]:
        async with self.runner(model, load, timer) as runner:
            async for chunk in self.upstream.stream(runner, path, body, chunk_type):
                yield chunk

    async def call(
        self, model: StoredModel | RemoteModel, load: LoadOptions, path: str, body: msgspec.Struct, result_type: type[T]
    ) -> T:
        """One whole answer, not streamed (from the embedding runner with `load.embedding`)."""
        async with self.scheduler.lease(model, load) as runner:
            return await self.upstream.post(runner, path, body, result_type)

    async def relay(
        self, model: StoredModel | RemoteModel, load: LoadOptions, path: str, content: bytes
    ) -> AsyncIterator[tuple[str, bytes]]:
        """A client's body passed on as is; llama-server's answer as (event, data) pairs."""
        async with self.scheduler.lease(model, load) as runner:
            async for event in self.upstream.relay(runner, path, content):
                yield event

    async def load(self, model: StoredModel | RemoteModel, load: LoadOptions) -> None:
        async with self.scheduler.lease(model, load):
            pass
