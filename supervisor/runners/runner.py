"""A llama-server for one model as requests see it: claims, keep-alive and expiry, a restart
when the launch spec changes, and backoff after crashes; process.py runs the process itself."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import Callable

from supervisor.errors import LlamagateError
from supervisor.runners import memory
from supervisor.runners.events import RunnerEvents, Unheard
from supervisor.runners.launch import LaunchSpec
from supervisor.runners.process import Process

log = logging.getLogger("llamagate.runner")

SHUTTING_DOWN = "llamagate is shutting down"


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


def _backoff(failures: int) -> float:
    """Seconds before another start after `failures` failed starts or crashes in a row: the first
    retry is immediate (a one-off crash), then 1, 2, 4… up to 30."""
    return 0.0 if failures <= 1 else min(2.0 ** (failures - 2), 30.0)


# The scheduler's gate before a start; it yields the spec to start, with the GPU it chose.
Admit = Callable[["Runner", LaunchSpec], contextlib.AbstractAsyncContextManager[LaunchSpec]]


class Runner:
    """A llama-server for one model. Its state changes only inside its own methods, which callers
    reach through `acquire`/`release` (requests), `evict`/`unload` (the scheduler making room,
    clients) and `stop` (expiry, shutdown); decisions on the state are taken under its locks.

    `admit` is the scheduler's gate before a process starts (room for it); `on_change` tells the
    scheduler this runner became idle or let its memory go; `events` hears of loads, evictions and
    crashes, named by `model` (its `name:tag`) and `embedding`.
    """

    def __init__(
        self,
        name: str,
        keep_alive: float,
        load_timeout: float,
        stop_grace: float,
        *,
        hang_timeout: float = math.inf,
        admit: Admit | None = None,
        on_change: Callable[[], None] = lambda: None,
        model: str = "",
        embedding: bool = False,
        events: RunnerEvents | None = None,
    ) -> None:
        self.name = name
        self.model = model or name
        self.embedding = embedding
        self._events = events or Unheard()
        self.keep_alive = self.default_keep_alive = keep_alive
        self.load_timeout = load_timeout
        self.stop_grace = stop_grace
        self.hang_timeout = hang_timeout
        self._admit = admit or (lambda runner, spec: contextlib.nullcontext(spec))
        self._on_change = on_change
        self.spec: LaunchSpec | None = None
        # The spec whose memory this runner holds, or is about to once admitted; None when no
        # process is alive or starting. The scheduler sums these to decide what fits.
        self.holds: LaunchSpec | None = None
        # The scheduler's estimate of its memory, made as it admitted the load; the load's log
        # replaces it once read (see `footprint`).
        self.predicted: memory.Estimate | None = None
        self.state = State.STOPPED
        # When (wall clock) the load under way began, waiting for room included; else None.
        self.loading_since: float | None = None
        self.active = 0
        self.expires_at = math.inf
        # The latest process, kept after it exits for its log tail and exit message.
        self._process: Process | None = None
        self._running_spec: LaunchSpec | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        # Crash-loop bookkeeping: consecutive failed starts and crashes, and what the last said.
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        # Requests waiting to claim the runner, in arrival order (see `acquire`).
        self._waiting: list[object] = []
        self._cond = asyncio.Condition()
        self._lifecycle = asyncio.Lock()
        # Set once the server is shutting down: no more starts (see `close`).
        self._closed = False

    @property
    def base_url(self) -> str:
        return self._process.base_url if self._process else "http://127.0.0.1:0"

    @property
    def api_key(self) -> str:
        return self._process.api_key if self._process else ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_tail(self) -> str:
        return self._process.log_tail if self._process else ""

    def output(self) -> list[str]:
        """The last lines its latest process wrote, oldest first."""
        return self._process.output() if self._process else []

    @property
    def resident_bytes(self) -> int:
        """What its process holds in memory now, from /proc (0 without one)."""
        return memory.resident_bytes(self.pid) if self.pid else 0

    @property
    def placement(self) -> memory.Estimate | None:
        """Where its memory is, as its process's load log says (None before it said, or if its
        build doesn't)."""
        if self.holds is None or self._process is None:
            return None
        return self._process.load_log.placement(self._file_size())

    @property
    def footprint(self) -> memory.Estimate | None:
        """Where its memory is: as its load log says, else as predicted; None when it holds none."""
        return self.placement or (self.predicted if self.holds is not None else None)

    def _file_size(self) -> int:
        try:
            return self.holds.model_path.stat().st_size if self.holds else 0
        except OSError:
            return 0

    @property
    def idle(self) -> bool:
        """No request holds it and no start is under way (a snapshot: `evict` decides again)."""
        return self.active == 0 and (self._start_task is None or self._start_task.done())

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn (for a restart, or behind one that waits for it)."""
        return len(self._waiting)

    def serving(self, spec: LaunchSpec) -> bool:
        return self.state is State.READY and self._running_spec == spec

    # Requests ---------------------------------------------------------------------------------

    async def acquire(self, spec: LaunchSpec, keep_alive: float | None,
                      default_keep_alive: float | None = None) -> None:
        """Claim the runner for one request and return once it serves `spec`; a new load without a
        `keep_alive` keeps the model `default_keep_alive` (the model's own, from its config table),
        else the runner's default.

        A request whose spec differs from the one in use waits until the runner is idle, then
        restarts it; the claim comes first so that an expiry can't stop the process under us.
        Requests take their turns in arrival order: once one waits for a restart, later ones for
        the spec in use wait behind it, or a steady flow of them would keep it waiting forever.
        """
        async with self._cond:
            turn = object()
            self._waiting.append(turn)
            try:
                while self._waiting[0] is not turn or (self.active > 0 and self.spec != spec):
                    await self._cond.wait()
            finally:
                self._waiting.remove(turn)
                self._cond.notify_all()
            self.spec = spec
            self.active += 1
            if keep_alive is not None:
                self.keep_alive = keep_alive
            elif self.state is State.STOPPED:
                # A keep_alive sticks to a loaded runner only: a new load starts from the default
                # (else an unload's 0 would unload the model after every later request).
                self.keep_alive = self.default_keep_alive if default_keep_alive is None else default_keep_alive
            self.expires_at = math.inf
            if self._expiry_task:
                self._expiry_task.cancel()
                self._expiry_task = None
        try:
            while not self.serving(spec):
                if self._closed:
                    raise LlamagateError(503, SHUTTING_DOWN)
                task = self._start_task
                if task is not None and task.cancelling() and not task.done():
                    # A start its waiters abandoned, still stopping its process: a new start
                    # comes after it (its failure is not ours).
                    await asyncio.wait({task})
                    continue
                if task is None or task.done():
                    task = self._start_task = asyncio.create_task(self._restart(spec))
                # Shielded: a client that gives up must not abort a start others wait for (the
                # last one to leave cancels it, in `release`).
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    # The start was cancelled, not this request: by `close` (the loop answers 503).
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise
        except BaseException:
            await self.release()
            raise

    async def release(self, served: bool = False) -> None:
        """End a request's claim; `served` says it completed, which ends a crash streak."""
        # Shielded: it runs in `finally` blocks of cancelled requests, and a lost release would
        # keep the runner busy forever.
        await asyncio.shield(self._release(served))

    async def _release(self, served: bool) -> None:
        async with self._cond:
            self.active -= 1
            if served:
                self._failures = 0
            self._cond.notify_all()
            if self.active == 0:
                task = self._start_task
                if task is not None and not task.done() and not task.cancelling():
                    # Every request waiting for this start left: nobody needs its process.
                    log.info("[%s] load abandoned: every request waiting for it left", self.name)
                    task.cancel()
                self._expire_later()
                self._on_change()

    def _expire_later(self) -> None:
        """Count down keep_alive from now (an idle runner; under the request lock)."""
        if self._expiry_task:
            self._expiry_task.cancel()
            self._expiry_task = None
        self.expires_at = math.inf
        if self.keep_alive != math.inf:
            self.expires_at = time.time() + self.keep_alive
            self._expiry_task = asyncio.create_task(self._expire_after(self.keep_alive))

    async def keep(self, keep_alive: float | None) -> None:
        """Its model was just used through its other runner (chat beside embeddings): to a client
        a model is one thing, so its keep_alive, if given, applies here too, and the countdown
        starts again from now (a busy one's starts when its requests end)."""
        async with self._cond:
            if self.state is State.STOPPED:
                return  # a keep_alive sticks to a loaded runner only (see `acquire`)
            if keep_alive is not None:
                self.keep_alive = keep_alive
            if self.active == 0:
                self._expire_later()

    def close(self) -> None:
        """The server is shutting down: no new starts, and a start under way is cancelled (its
        process stopped), so that shutdown never waits for a load; its requests get a 503."""
        self._closed = True
        if self._start_task is not None and not self._start_task.done():
            log.info("[%s] load cancelled: shutting down", self.name)
            self._start_task.cancel()

    async def unload(self) -> None:
        """Stop now if idle, else as soon as the requests in flight are done."""
        async with self._cond:
            self.keep_alive = 0.0
            if self.active == 0:
                if self._expiry_task:
                    self._expiry_task.cancel()
                    self._expiry_task = None
                await self.stop()

    async def evict(self) -> bool:
        """Stop to make room for another model, unless a request or a start holds the runner:
        then False, and the scheduler looks elsewhere or waits."""
        async with self._cond:
            if not self.idle:
                return False
            if self._expiry_task:
                self._expiry_task.cancel()
                self._expiry_task = None
            log.info("[%s] unloading to make room", self.name)
            await self.stop()
            self._events.evicted(self.model, self.embedding)
            return True

    async def _expire_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        # Decided and done under the request lock: a request arriving now waits for the stop and
        # then restarts the runner, instead of being handed a process about to die.
        async with self._cond:
            if self.active > 0:
                return
            self._expiry_task = None
            await self.stop()

    # Its process-------------------------------------------------------------------------------

    def _failed(self, message: str) -> None:
        self._failures += 1
        self._last_error = message
        self._retry_at = time.monotonic() + _backoff(self._failures)

    async def _restart(self, spec: LaunchSpec) -> None:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise LlamagateError(500, f"{self._last_error}\n(llama-server for {self.name} failed {self._failures} "
                                      f"times in a row; not retrying for another {math.ceil(wait)}s)")
        self.loading_since = time.time()
        try:
            await self._load(spec)
        finally:
            self.loading_since = None

    async def _load(self, spec: LaunchSpec) -> None:
        # Room first (the scheduler may evict others, or wait for them to go idle), outside the
        # process lock so that no one holds that lock while waiting for others.
        async with self._admit(self, spec) as spec:
            self.holds = spec
        async with self._lifecycle:
            try:
                replaces = self._process is not None and self._process.running
                if replaces or self._failures > 0:
                    self._events.restarted(self.model, self.embedding)
                if replaces:
                    await self._terminate()
                await self._spawn(spec)
            except LlamagateError as e:
                self._events.load_failed(self.model, self.embedding)
                self._failed(e.message)
                self._gone()
                raise
            except BaseException:
                self._gone()
                raise

    def _gone(self) -> None:
        """No process any more: its memory is free for others."""
        self.state = State.STOPPED
        self._running_spec = None
        self.holds = None
        self.predicted = None
        self._on_change()

    async def _spawn(self, spec: LaunchSpec) -> None:
        self.state = State.STARTING
        started = time.monotonic()
        process = self._process = Process(self.name, on_exit=self._exited)
        try:
            await process.start(spec, self.load_timeout)
        except BaseException:
            await self._terminate()
            raise
        self._running_spec = spec
        self.state = State.READY
        self._events.loaded(self.model, self.embedding, time.monotonic() - started)
        if self.hang_timeout != math.inf:
            process.watch(self.hang_timeout, busy=lambda: self.active > 0)

    def _exited(self, process: Process, code: int | None) -> None:
        # Exits while starting are the start's to report, and stops are ours: only a ready
        # process exiting is a crash.
        if process is self._process and self.state is State.READY:
            message = process.death(code)
            log.warning("[%s] %s", self.name, message)
            self._events.crashed(self.model, self.embedding)
            self._failed(message)
            self._gone()

    async def failure(self, error: Exception) -> LlamagateError:
        """The error for a request whose connection broke (see `Process.failure`)."""
        assert self._process is not None  # a request was served, so a process was started
        return await self._process.failure(error)

    def failover(self, error: Exception) -> bool:
        """A runner is the only process for its model: nowhere else to send the request."""
        return False

    async def stop(self) -> None:
        async with self._lifecycle:
            await self._terminate()
            if self.holds is not None:
                self._gone()

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()

    async def _terminate(self) -> None:
        process = self._process
        if process is not None and process.running:
            self.state = State.STOPPING
            await process.terminate(self.stop_grace)
        self.state = State.STOPPED
        self._running_spec = None
