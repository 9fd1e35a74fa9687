"""From a resolved model to llama-server's stream: lease a ready runner, send, and time it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec

from proxy.upstream import Upstream
from supervisor.errors import LlamagateError
from supervisor.scheduler import LoadOptions, Scheduler
from supervisor.store import StoredModel
from supervisor.upstreams import RemoteModel

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

    async def stream(
        self,
        model: StoredModel | RemoteModel,
        load: LoadOptions,
        path: str,
        body: msgspec.Struct,
        chunk_type: type[T],
        timer: Timer,
    ) -> AsyncIterator[T]:
        attempts = len(model.pool.endpoints) if isinstance(model, RemoteModel) else 1
        for attempt in range(attempts):
            sent = False
            try:
                async with self.scheduler.lease(model, load) as runner:
                    timer.load_ns = timer.total_ns()
                    async for chunk in self.upstream.stream(runner, path, body, chunk_type):
                        sent = True
                        yield chunk
                return
            except LlamagateError as e:
                # An upstream that failed before answering is out of rotation now: the next
                # one in rotation gets the request. Once tokens went out, the error stands.
                if sent or e.status != 502 or attempt == attempts - 1:
                    raise

    async def load(self, model: StoredModel | RemoteModel, load: LoadOptions) -> None:
        async with self.scheduler.lease(model, load):
            pass
