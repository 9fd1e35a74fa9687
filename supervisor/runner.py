"""One llama-server process for one model: spawn, wait for health, watch, stop."""

from __future__ import annotations

import asyncio
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
from dataclasses import dataclass
from pathlib import Path

import httpx

from supervisor.errors import LlamagateError

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
    # An embedding runner is its own process (llama-server serves either embeddings or
    # completions); `pooling` is "" to keep the GGUF's own pooling type.
    embedding: bool = False
    pooling: str = ""
    projector: Path | None = None  # --mmproj: a vision model's image encoder
    adapters: tuple[Path, ...] = ()  # --lora

    def args(self) -> list[str]:
        extra = ["--mmproj", str(self.projector)] if self.projector else []
        for adapter in self.adapters:
            extra += ["--lora", str(adapter)]
        return [*self._base_args(), *self._embedding_args(), *extra]

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
            "--ctx-size", str(self.num_ctx * self.parallel),
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


class Runner:
    """A llama-server for one model. Its state changes only inside its own methods, which callers
    reach through `acquire`/`release` (requests) and `stop` (expiry, shutdown)."""

    def __init__(self, name: str, keep_alive: float, load_timeout: float, stop_grace: float) -> None:
        self.name = name
        self.keep_alive = self.default_keep_alive = keep_alive
        self.load_timeout = load_timeout
        self.stop_grace = stop_grace
        self.spec: LaunchSpec | None = None
        self.state = State.STOPPED
        self.port = 0
        self.api_key = ""
        self.active = 0
        self.expires_at = math.inf
        self._proc: asyncio.subprocess.Process | None = None
        self._running_spec: LaunchSpec | None = None
        self._log_tail: deque[str] = deque(maxlen=20)
        self._port_found: asyncio.Future[int] | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
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

    def _serving(self, spec: LaunchSpec) -> bool:
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
            while not self._serving(spec):
                task = self._start_task
                if task is None or task.done():
                    task = self._start_task = asyncio.create_task(self._restart(spec))
                # Shielded: a client that gives up must not abort a start others wait for.
                await asyncio.shield(task)
        except BaseException:
            await self.release()
            raise

    async def release(self) -> None:
        # Shielded: it runs in `finally` blocks of cancelled requests, and a lost release would
        # keep the runner busy forever.
        await asyncio.shield(self._release())

    async def _release(self) -> None:
        async with self._cond:
            self.active -= 1
            self._cond.notify_all()
            if self.active == 0 and self.keep_alive != math.inf:
                self.expires_at = time.time() + self.keep_alive
                self._expiry_task = asyncio.create_task(self._expire_after(self.keep_alive))

    async def unload(self) -> None:
        """Stop now if idle, else as soon as the requests in flight are done."""
        async with self._cond:
            self.keep_alive = 0.0
            if self.active == 0:
                if self._expiry_task:
                    self._expiry_task.cancel()
                    self._expiry_task = None
                await self.stop()

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

    async def _restart(self, spec: LaunchSpec) -> None:
        async with self._lifecycle:
            if self._proc and self._proc.returncode is None:
                await self._terminate()
            await self._spawn(spec)

    async def _spawn(self, spec: LaunchSpec) -> None:
        self.state = State.STARTING
        self.api_key = secrets.token_urlsafe(24)
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
            self.state = State.STOPPED
            raise LlamagateError(500, f"cannot start llama-server {spec.binary}: {e}") from e
        proc = self._proc
        asyncio.create_task(self._pump_log(proc))
        try:
            await asyncio.wait_for(self._wait_ready(proc), self.load_timeout)
        except BaseException as e:
            await self._terminate()
            if isinstance(e, TimeoutError):
                raise LlamagateError(500, f"timed out after {self.load_timeout:.0f}s loading "
                                          f"{self.name}; llama-server said:\n{self.log_tail}") from e
            raise
        self._running_spec = spec
        self.state = State.READY
        log.info("[%s] ready on port %d in %.2fs (pid %d)", self.name, self.port,
                 time.monotonic() - started, proc.pid)

    async def _pump_log(self, proc: asyncio.subprocess.Process) -> None:
        """Copy the child's output to our log and keep its tail for error messages. Always read,
        or a full pipe would block llama-server."""
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            self._log_tail.append(line)
            log.info("[%s] %s", self.name, line)
            if self._port_found and not self._port_found.done() and (m := _LISTENING.search(line)):
                self._port_found.set_result(int(m.group(1)))
        code = await proc.wait()
        if proc is self._proc and self.state is not State.STOPPING:
            log.warning("[%s] llama-server exited with code %s", self.name, code)
            self.state = State.STOPPED
            self._running_spec = None

    def _exited_error(self, code: int | None) -> LlamagateError:
        return LlamagateError(500, f"llama-server for {self.name} exited with code {code} while "
                                   f"loading:\n{self.log_tail}")

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        assert self._port_found is not None
        exited = asyncio.create_task(proc.wait())
        try:
            done, _ = await asyncio.wait({self._port_found, exited}, return_when=asyncio.FIRST_COMPLETED)
            if exited in done:
                raise self._exited_error(proc.returncode)
            self.port = self._port_found.result()
            async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as client:
                while True:
                    if exited.done():
                        raise self._exited_error(proc.returncode)
                    try:
                        if (await client.get("/health")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
        finally:
            exited.cancel()

    async def stop(self) -> None:
        async with self._lifecycle:
            await self._terminate()

    async def _terminate(self) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            self.state = State.STOPPED
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
