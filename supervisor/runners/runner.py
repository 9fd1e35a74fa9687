"""One llama-server process for one model: spawn, wait for health, watch, stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import logging
import math
import os
import re
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from supervisor.errors import LlamagateError
from supervisor.httpclient import async_client

log = logging.getLogger("llamagate.runner")

_LISTENING = re.compile(r"listening on https?://[^\s:]+:(\d+)")
_PR_SET_PDEATHSIG = 1


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


@dataclass(frozen=True)
class LaunchSpec:
    """Everything that needs a new process when it changes."""

    binary: Path
    model_path: Path
    num_ctx: int
    threads: int
    parallel: int
    # Ollama's num_gpu and num_batch; None leaves llama-server's own default.
    gpu_layers: int | None = None
    batch: int | None = None
    # llama.cpp RPC workers (`host:port`) to split the model over; empty runs it all here.
    rpc: tuple[str, ...] = ()
    # An embedding runner is its own process (llama-server serves either embeddings or
    # completions); `pooling` is "" to keep the GGUF's own pooling type.
    embedding: bool = False
    pooling: str = ""
    projector: Path | None = None  # --mmproj: a vision model's image encoder
    adapters: tuple[Path, ...] = ()  # --lora

    @property
    def ctx_total(self) -> int:
        return self.num_ctx * self.parallel

    def args(self) -> list[str]:
        extra = ["--mmproj", str(self.projector)] if self.projector else []
        for adapter in self.adapters:
            extra += ["--lora", str(adapter)]
        # Load options before the embedding flags: an embedding runner's batch size must win.
        return [*self._base_args(), *self._load_args(), *self._embedding_args(), *extra]

    def _load_args(self) -> list[str]:
        args = []
        if self.gpu_layers is not None:
            args += ["--n-gpu-layers", str(self.gpu_layers)]
        if self.batch is not None:
            args += ["--batch-size", str(self.batch)]
        if self.rpc:
            args += ["--rpc", ",".join(self.rpc)]
        return args

    def _embedding_args(self) -> list[str]:
        if not self.embedding:
            return []
        # A whole input must fit one physical batch: non-causal models can't split it.
        batch = str(self.num_ctx)
        pooling = ["--pooling", self.pooling] if self.pooling else []
        return ["--embeddings", *pooling, "--batch-size", batch, "--ubatch-size", batch]

    def _base_args(self) -> list[str]:
        return [
            str(self.binary),
            "--model", str(self.model_path),
            "--host", "127.0.0.1",
            # Port 0 and reading the bound port from the log avoids the race of picking a free
            # port ourselves (and llama.cpp's old SO_REUSEPORT double-bind, issue #20963).
            "--port", "0",
            # The KV cache is split over the slots: each slot gets the num_ctx it was asked for.
            "--ctx-size", str(self.ctx_total),
            "--parallel", str(self.parallel),
            "--threads", str(self.threads),
            "--jinja",
            "--no-webui",
            "--offline",
            "--log-colors", "off",
        ]


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when llamagate dies, however it dies (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def clean_env() -> dict[str, str]:
    """Our environment minus llama.cpp's own variables: `LLAMA_ARG_*` set any flag we don't pass,
    `LLAMA_API_KEY` the key, `LLAMA_LOG_*` the log we read the port and error reports from
    (`LLAMA_LOG_VERBOSITY=0` cuts it to a dozen lines, without the model loader's)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}


def _child_env(api_key: str) -> dict[str, str]:
    """A runner's environment: clean, plus its API key, where other users can't read it as they
    can read a command line."""
    return {**clean_env(), "LLAMA_API_KEY": api_key}


def _backoff(failures: int) -> float:
    """Seconds before another start after `failures` failed starts or crashes in a row: the first
    retry is immediate (a one-off crash), then 1, 2, 4… up to 30."""
    return 0.0 if failures <= 1 else min(2.0 ** (failures - 2), 30.0)


def _activity(pid: int) -> tuple[float, int] | None:
    """CPU seconds used and bytes read from storage (mmap faults included) so far, on Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        io = Path(f"/proc/{pid}/io").read_text()
    except (OSError, IndexError):
        return None
    read = next((int(line.split()[1]) for line in io.splitlines() if line.startswith("read_bytes:")), 0)
    # Fields 14 and 15 of stat (utime, stime), counted here from field 3, the one after the name.
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"), read


Admit = Callable[["Runner", LaunchSpec], contextlib.AbstractAsyncContextManager[None]]


class Runner:
    """A llama-server for one model. Its state changes only inside its own methods, which callers
    reach through `acquire`/`release` (requests), `evict`/`unload` (the scheduler making room,
    clients) and `stop` (expiry, shutdown); decisions on the state are taken under its locks.

    `admit` is the scheduler's gate before a process starts (room for it); `on_change` tells the
    scheduler this runner became idle or let its memory go.
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
    ) -> None:
        self.name = name
        self.keep_alive = self.default_keep_alive = keep_alive
        self.load_timeout = load_timeout
        self.stop_grace = stop_grace
        self.hang_timeout = hang_timeout
        self._admit = admit or (lambda runner, spec: contextlib.nullcontext())
        self._on_change = on_change
        self.spec: LaunchSpec | None = None
        # The spec whose memory this runner holds, or is about to once admitted; None when no
        # process is alive or starting. The scheduler sums these to decide what fits.
        self.holds: LaunchSpec | None = None
        self.state = State.STOPPED
        self.port = 0
        self.api_key = ""
        self.active = 0
        self.expires_at = math.inf
        self._proc: asyncio.subprocess.Process | None = None
        self._running_spec: LaunchSpec | None = None
        self._log_tail: deque[str] = deque(maxlen=20)
        self._last_output = 0.0
        self._port_found: asyncio.Future[int] | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._kill_reason = ""
        # Crash-loop bookkeeping: consecutive failed starts and crashes, and what the last said.
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._cond = asyncio.Condition()
        self._lifecycle = asyncio.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_tail(self) -> str:
        return "\n".join(self._log_tail)

    @property
    def idle(self) -> bool:
        """No request holds it and no start is under way (a snapshot: `evict` decides again)."""
        return self.active == 0 and (self._start_task is None or self._start_task.done())

    def serving(self, spec: LaunchSpec) -> bool:
        return self.state is State.READY and self._running_spec == spec

    # Requests ---------------------------------------------------------------------------------

    async def acquire(self, spec: LaunchSpec, keep_alive: float | None) -> None:
        """Claim the runner for one request and return once it serves `spec`.

        A request whose spec differs from the one in use waits until the runner is idle, then
        restarts it; the claim comes first so that an expiry can't stop the process under us.
        """
        async with self._cond:
            while self.active > 0 and self.spec != spec:
                await self._cond.wait()
            self.spec = spec
            self.active += 1
            if keep_alive is not None:
                self.keep_alive = keep_alive
            elif self.state is State.STOPPED:
                # A keep_alive sticks to a loaded runner only: a new load starts from the default
                # (else an unload's 0 would unload the model after every later request).
                self.keep_alive = self.default_keep_alive
            self.expires_at = math.inf
            if self._expiry_task:
                self._expiry_task.cancel()
                self._expiry_task = None
        try:
            while not self.serving(spec):
                task = self._start_task
                if task is None or task.done():
                    task = self._start_task = asyncio.create_task(self._restart(spec))
                # Shielded: a client that gives up must not abort a start others wait for.
                await asyncio.shield(task)
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
                if self.keep_alive != math.inf:
                    self.expires_at = time.time() + self.keep_alive
                    self._expiry_task = asyncio.create_task(self._expire_after(self.keep_alive))
                self._on_change()

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

    # Process ----------------------------------------------------------------------------------

    def _failed(self, message: str) -> None:
        self._failures += 1
        self._last_error = message
        self._retry_at = time.monotonic() + _backoff(self._failures)

    async def _restart(self, spec: LaunchSpec) -> None:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise LlamagateError(500, f"{self._last_error}\n(llama-server for {self.name} failed {self._failures} "
                                      f"times in a row; not retrying for another {math.ceil(wait)}s)")
        # Room first (the scheduler may evict others, or wait for them to go idle), outside the
        # process lock so that no one holds that lock while waiting for others.
        async with self._admit(self, spec):
            self.holds = spec
        async with self._lifecycle:
            try:
                if self._proc and self._proc.returncode is None:
                    await self._terminate()
                await self._spawn(spec)
            except LlamagateError as e:
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
        self._on_change()

    async def _spawn(self, spec: LaunchSpec) -> None:
        self.state = State.STARTING
        self.api_key = secrets.token_urlsafe(24)
        self.port = 0
        self._kill_reason = ""
        self._log_tail.clear()
        self._port_found = asyncio.get_running_loop().create_future()
        log.info("[%s] starting: %s", self.name, " ".join(spec.args()))
        started = time.monotonic()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *spec.args(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=spec.binary.parent,
                env=_child_env(self.api_key),
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as e:
            raise LlamagateError(500, f"cannot start llama-server {spec.binary}: {e}") from e
        proc = self._proc
        self._last_output = time.monotonic()
        asyncio.create_task(self._pump_log(proc))
        try:
            await self._wait_ready(proc)
        except BaseException:
            await self._terminate()
            raise
        self._running_spec = spec
        self.state = State.READY
        log.info("[%s] ready on port %d in %.2fs (pid %d)", self.name, self.port,
                 time.monotonic() - started, proc.pid)
        if self.hang_timeout != math.inf:
            asyncio.create_task(self._watch(proc))

    async def _pump_log(self, proc: asyncio.subprocess.Process) -> None:
        """Copy the child's output to our log and keep its tail for error messages. Read in
        chunks, not lines: the loader's progress dots come without a newline, and they are how
        a slow load is told from a stuck one. Always read, or a full pipe would block it."""
        assert proc.stdout is not None
        partial = b""
        while data := await proc.stdout.read(1 << 16):
            self._last_output = time.monotonic()
            *lines, partial = (partial + data).split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip()
                if not line:
                    continue
                self._log_tail.append(line)
                log.info("[%s] %s", self.name, line)
                if self._port_found and not self._port_found.done() and (m := _LISTENING.search(line)):
                    self._port_found.set_result(int(m.group(1)))
        code = await proc.wait()
        # Exits while starting are the start's to report, and stops are ours: only a ready
        # process exiting is a crash.
        if proc is self._proc and self.state is State.READY:
            message = self._death(code)
            log.warning("[%s] %s", self.name, message)
            self._failed(message)
            self._gone()

    def _death(self, code: int | None) -> str:
        reason = self._kill_reason or f"exited unexpectedly with code {code}"
        return f"llama-server for {self.name} {reason}; its last output:\n{self.log_tail}"

    async def failure(self, error: Exception) -> LlamagateError:
        """The error for a request whose connection broke: why the process died, if it did (the
        broken connection usually arrives a moment before the exit is seen)."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 2)
        if proc is not None and proc.returncode is not None:
            return LlamagateError(500, self._death(proc.returncode))
        return LlamagateError(500, f"llama-server for {self.name} failed: {error or type(error).__name__}")

    def _exited_error(self, code: int | None) -> LlamagateError:
        return LlamagateError(500, f"llama-server for {self.name} exited with code {code} while "
                                   f"loading:\n{self.log_tail}")

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        """Poll /health until 200. Give up when the process exits, or when it has made no
        progress (no output, under a tenth of a core, no disk reads) for `load_timeout`: a big
        model on a slow disk keeps loading as long as it moves."""
        assert self._port_found is not None
        exited = asyncio.create_task(proc.wait())
        started = progress_at = noted = time.monotonic()
        next_note = started + 15
        seen_output = self._last_output
        activity = _activity(proc.pid)
        try:
            async with async_client(timeout=5) as client:
                while True:
                    if exited.done():
                        raise self._exited_error(proc.returncode)
                    if not self.port and self._port_found.done():
                        self.port = self._port_found.result()
                    if self.port:
                        with contextlib.suppress(httpx.TransportError):
                            if (await client.get(f"{self.base_url}/health")).status_code == 200:
                                return
                    now = time.monotonic()
                    if now - noted >= 1:
                        current = _activity(proc.pid)
                        busy = bool(current and activity and (current[0] - activity[0] >= 0.1 * (now - noted)
                                                              or current[1] > activity[1]))
                        if busy or self._last_output != seen_output:
                            progress_at = now
                        activity, seen_output, noted = current, self._last_output, now
                        if now >= next_note:
                            next_note += 15
                            log.info("[%s] still loading after %.0fs (last progress %.0fs ago)",
                                     self.name, now - started, now - progress_at)
                    if now - progress_at > self.load_timeout:
                        raise LlamagateError(500, f"llama-server for {self.name} is stuck: no progress (output, CPU or "
                                                  f"disk reads) for {self.load_timeout:.0f}s while loading; "
                                                  f"its last output:\n{self.log_tail}")
                    await asyncio.wait({exited}, timeout=0.05)
        finally:
            exited.cancel()

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """While requests are in flight, ask /slots, which llama-server answers from its main loop
        (where /health is answered by the HTTP thread alone); a process that can't answer within
        `hang_timeout` is hung, and is killed so that its requests fail and the next one restarts it."""
        exited = asyncio.create_task(proc.wait())
        every = min(5.0, self.hang_timeout / 2)
        headers = {"Authorization": f"Bearer {self.api_key}"}
        try:
            async with async_client(base_url=self.base_url, headers=headers, timeout=self.hang_timeout) as client:
                while not exited.done():
                    await asyncio.wait({exited}, timeout=every)
                    if exited.done() or self.active == 0 or self.state is not State.READY:
                        continue
                    try:
                        await client.get("/slots")
                    except httpx.TimeoutException:
                        if proc is self._proc and proc.returncode is None and self.active > 0:
                            self._kill_reason = (f"stopped responding for {self.hang_timeout:.0f}s with requests in "
                                                 "flight and was killed")
                            log.warning("[%s] llama-server %s", self.name, self._kill_reason)
                            with contextlib.suppress(ProcessLookupError):
                                os.killpg(proc.pid, signal.SIGKILL)
                    except httpx.TransportError:
                        pass  # it exited: the log pump reports that
        finally:
            exited.cancel()

    async def stop(self) -> None:
        async with self._lifecycle:
            await self._terminate()
            if self.holds is not None:
                self._gone()

    async def _terminate(self) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            self.state = State.STOPPED
            self._running_spec = None
            return
        self.state = State.STOPPING
        log.info("[%s] stopping (pid %d)", self.name, proc.pid)
        for sig, wait in ((signal.SIGTERM, self.stop_grace), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                await asyncio.wait_for(proc.wait(), wait)
                break
            except TimeoutError:
                continue
        self.state = State.STOPPED
        self._running_spec = None
