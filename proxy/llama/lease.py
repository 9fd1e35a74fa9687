"""From a resolved Model to llama-server: lease what serves it (a ready runner, or a server of its
`--upstream` pool) and make the request's calls there. The only way routes reach a runner."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from proxy import exchange
from proxy.llama.client import Hop, Target
from proxy.llama.wire import Timings
from supervisor.models.model import Model
from supervisor.runners.scheduler import LoadOptions, Scheduler

T = TypeVar("T")


@dataclass
class Timer:
    """A request's clock: total time from arrival, load time until a runner was ready."""

    started: int = field(default_factory=time.monotonic_ns)
    load_ns: int = 0

    def total_ns(self) -> int:
        return time.monotonic_ns() - self.started


def _count(result: Any) -> None:
    """The tokens of a whole upstream answer (its final chunk, or the answer), noted on the
    request: its OpenAI `usage`, else llama-server's `timings` (native chat and completion
    streams, infill), counted as the answers count them (prompt tokens include the cached ones)."""
    if (x := exchange.current()) is None:
        return
    timings: Timings | None = getattr(result, "timings", None)
    usage = getattr(result, "usage", None)
    seconds = timings.predicted_ms / 1000 if timings else 0.0
    if usage is not None and hasattr(usage, "completion_tokens"):  # not an embedding's
        x.used(usage.prompt_tokens, usage.completion_tokens, seconds)
    elif timings is not None:
        x.used(timings.cache_n + timings.prompt_n, timings.predicted_n, seconds)


@dataclass
class Lease:
    """One request's hold on one target: its calls (template, generation, tokenize) all go there,
    and its generations' tokens are noted on the request (see proxy/exchange.py)."""

    hop: Hop
    target: Target

    def stream(self, path: str, body: msgspec.Struct, chunk_type: type[T]) -> AsyncIterator[T]:
        return self.hop.stream(self.target, path, body, chunk_type, last=_count)

    async def post(self, path: str, body: msgspec.Struct, result_type: type[T]) -> T:
        result = await self.hop.post(self.target, path, body, result_type)
        _count(result)
        return result

    def relay(self, path: str, content: bytes) -> AsyncIterator[tuple[str | None, bytes]]:
        return self.hop.relay(self.target, path, content)


class Inference:
    def __init__(self, scheduler: Scheduler, hop: Hop) -> None:
        self.scheduler = scheduler
        self.hop = hop

    @asynccontextmanager
    async def lease(self, model: Model, load: LoadOptions, timer: Timer | None = None) -> AsyncIterator[Lease]:
        """A lease for several calls (tokenize, then generate), its wait timed as load."""
        if x := exchange.current():
            x.model = model.name.display
        async with self.scheduler.lease(model, load) as target:
            if timer:
                timer.load_ns = timer.total_ns()
            yield Lease(self.hop, target)

    async def stream(
        self, model: Model, load: LoadOptions, path: str, body: msgspec.Struct, chunk_type: type[T], timer: Timer,
    ) -> AsyncIterator[T]:
        async with self.lease(model, load, timer) as lease:
            async for chunk in lease.stream(path, body, chunk_type):
                yield chunk

    async def call(self, model: Model, load: LoadOptions, path: str, body: msgspec.Struct, result_type: type[T]) -> T:
        """One whole answer, not streamed (from the embedding runner with `load.embedding`)."""
        async with self.lease(model, load) as lease:
            return await lease.post(path, body, result_type)

    async def relay(
        self, model: Model, load: LoadOptions, path: str, content: bytes,
    ) -> AsyncIterator[tuple[str | None, bytes]]:
        """A client's body passed on as is; llama-server's answer as (event, data) pairs."""
        async with self.lease(model, load) as lease:
            async for event in lease.relay(path, content):
                yield event

    async def load(self, model: Model, load: LoadOptions) -> None:
        async with self.lease(model, load):
            pass
