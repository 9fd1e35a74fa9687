"""The pulls in flight and the last few finished, whoever started them (a client's /api/pull or the
status page's background pull), with their progress summed over layers; for the status page."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator

import msgspec

from supervisor.errors import LlamagateError
from supervisor.pull.registry import Progress, Puller

log = logging.getLogger("llamagate.registry")

_FINISHED_KEPT = 10


class PullStatus(msgspec.Struct):
    """One pull as the status page shows it: its latest step, bytes of all its layers, and how it
    ended (`error` empty on success)."""

    id: int
    name: str
    status: str = "starting"
    completed: int = 0
    total: int = 0
    done: bool = False
    error: str = ""


class Pulls:
    def __init__(self, puller: Puller) -> None:
        self._puller = puller
        self._ids = itertools.count(1)
        self._running: dict[int, PullStatus] = {}
        self._finished: deque[PullStatus] = deque(maxlen=_FINISHED_KEPT)
        # Background pulls belong to the server, not to the request that started them.
        self._tasks: set[asyncio.Task[None]] = set()

    async def track(self, text: str, insecure: bool) -> AsyncIterator[Progress]:
        """`Puller.pull`, recorded here as its steps pass."""
        pull_id = next(self._ids)
        entry = self._running[pull_id] = PullStatus(pull_id, text)
        layers: dict[str, tuple[int, int]] = {}
        try:
            async for p in self._puller.pull(text, insecure):
                entry.status = p.status
                if p.digest:
                    layers[p.digest] = (p.completed, p.total)
                    entry.completed = sum(c for c, _ in layers.values())
                    entry.total = sum(t for _, t in layers.values())
                yield p
        except LlamagateError as e:
            entry.error = e.message
            raise
        except Exception as e:
            entry.error = f"internal error: {e or type(e).__name__} (see the llamagate log)"
            raise
        finally:
            if not entry.error and entry.status != "success":
                entry.error = "stopped before it finished (its client left, or the server stopped)"
            entry.done = True
            del self._running[pull_id]
            self._finished.append(entry)

    def start(self, text: str, insecure: bool = False) -> None:
        """Pull in the background, until done or the server stops."""
        task = asyncio.create_task(self._drain(text, insecure))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, text: str, insecure: bool) -> None:
        try:
            async for _ in self.track(text, insecure):
                pass
        except LlamagateError as e:
            log.warning("pull %s failed: %s", text, e.message)
        except Exception:
            log.exception("pull %s failed", text)

    def list(self) -> list[PullStatus]:
        """Those in flight, oldest first, then the finished ones, latest first."""
        return [*self._running.values(), *reversed(self._finished)]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
