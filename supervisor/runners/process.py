"""One llama-server OS process: spawn it, pump its log, wait until it serves, watch it for
hangs, stop it, and say why it died. A restart is a new `Process`."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import httpx

from supervisor.errors import LlamagateError
from supervisor.httpclient import async_client
from supervisor.runners.launch import LaunchSpec, child_env
from supervisor.runners.placement import LoadLog
from supervisor.runners.rpc import check_workers

# The runner's logger: a process's lines are part of its runner's story in the log.
log = logging.getLogger("llamagate.runner")

_LISTENING = re.compile(r"listening on https?://[^\s:]+:(\d+)")
# Logged the moment /health turns 200: waking on it, not on the next 50 ms poll, takes some
# 25 ms off every load.
_LOADED = re.compile(r"\bmodel loaded$")
# llama-server's lines start with the time since start and a level letter: "0.00.944.017 I srv ...".
_MARKED = re.compile(r"[\d.]+ ([DIWE]) ")
_LEVELS = {"D": logging.DEBUG, "W": logging.WARNING, "E": logging.ERROR}
# What --log-verbosity 4 (runners/launch.py) adds to a load that is no news at INFO: the GGUF's
# metadata, key by key (`llamagate show -v` prints it), half of a load's lines.
_DUMP = re.compile(r"[\d.]+ [DI] (llama_model_loader: - |print_info: )")
# Warnings llama-server writes for every request that repeats a cached prompt (it re-reads the
# last token): routine, not news, and two log lines a request.
_ROUTINE = re.compile(r"[\d.]+ W slot +operator\(\): id +\d+ \| task \d+ \| "
                      r"(need to evaluate at least 1 token|n_past was set to)")
_PR_SET_PDEATHSIG = 1
OUTPUT_LINES = 100
_TAIL_LINES = 20


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when llamagate dies, however it dies (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


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


class Process:
    """One llama-server process, from spawn to exit, with its port, API key and log tail.
    `name` labels its log lines and messages; `on_exit` hears of its exit once its output is
    all read, and decides whether that was a crash."""

    def __init__(self, name: str, on_exit: Callable[[Process, int | None], None]) -> None:
        self.name = name
        self.api_key = secrets.token_urlsafe(24)
        self.port = 0
        self._on_exit = on_exit
        self._proc: asyncio.subprocess.Process | None = None
        # Its last lines of output: the status page shows them all, error messages the last few.
        self._output: deque[str] = deque(maxlen=OUTPUT_LINES)
        self._last_output = 0.0
        self._port_found: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._kill_reason = ""
        self._stopping = False
        self._ready = False
        # Its buffers per device and offloaded layers, from the load's log lines.
        self.load_log = LoadLog()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_tail(self) -> str:
        """Its last lines, for an error message."""
        return "\n".join(list(self._output)[-_TAIL_LINES:])

    def output(self) -> list[str]:
        """Its last `OUTPUT_LINES` lines of output, oldest first."""
        return list(self._output)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, spec: LaunchSpec, load_timeout: float) -> None:
        """Spawn it and return once it is healthy; if this fails, the caller terminates it."""
        if spec.rpc:
            await check_workers(self.name, spec.rpc)
        log.info("[%s] starting: %s", self.name, " ".join(spec.args()))
        started = time.monotonic()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *spec.args(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=spec.binary.parent,
                env=child_env(self.api_key),
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as e:
            raise LlamagateError(500, f"cannot start llama-server {spec.binary}: {e}") from e
        proc = self._proc
        self._last_output = time.monotonic()
        asyncio.create_task(self._pump_log(proc))
        await self._wait_ready(proc, load_timeout)
        self._ready = True
        log.info("[%s] ready on port %d in %.2fs (pid %d)", self.name, self.port,
                 time.monotonic() - started, proc.pid)

    def _level(self, line: str) -> int:
        """Warnings and errors always show; the rest at INFO while loading (people watch loads),
        but for the metadata dump, then at DEBUG: a dozen lines a request is no news."""
        if _DUMP.match(line) or _ROUTINE.match(line):
            return logging.DEBUG
        marked = _MARKED.match(line)
        if marked and marked.group(1) in _LEVELS:
            return _LEVELS[marked.group(1)]
        return logging.DEBUG if self._ready else logging.INFO

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
                self._output.append(line)
                if not self._ready:
                    self.load_log.feed(line)
                log.log(self._level(line), "[%s] %s", self.name, line)
                if not self._port_found.done() and (m := _LISTENING.search(line)):
                    self._port_found.set_result(int(m.group(1)))
                if not self._loaded.done() and _LOADED.search(line):
                    self._loaded.set_result(None)
        self._on_exit(self, await proc.wait())

    def death(self, code: int | None) -> str:
        """Why it exited with `code`, and what it said last."""
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
            return LlamagateError(500, self.death(proc.returncode))
        return LlamagateError(500, f"llama-server for {self.name} failed: {error or type(error).__name__}")

    def _exited_error(self, code: int | None) -> LlamagateError:
        return LlamagateError(500, f"llama-server for {self.name} exited with code {code} while "
                                   f"loading:\n{self.log_tail}")

    async def _wait_ready(self, proc: asyncio.subprocess.Process, load_timeout: float) -> None:
        """Poll /health until 200. Give up when the process exits, or when it has made no
        progress (no output, under a tenth of a core, no disk reads) for `load_timeout`: a big
        model on a slow disk keeps loading as long as it moves."""
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
                    if now - progress_at > load_timeout:
                        raise LlamagateError(500, f"llama-server for {self.name} is stuck: no progress (output, CPU or "
                                                  f"disk reads) for {load_timeout:.0f}s while loading; "
                                                  f"its last output:\n{self.log_tail}")
                    await asyncio.wait({exited} if self._loaded.done() else {exited, self._loaded}, timeout=0.05,
                                       return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()

    def watch(self, hang_timeout: float, busy: Callable[[], bool]) -> None:
        """Start watching the ready process for hangs while `busy()` (requests in flight)."""
        assert self._proc is not None
        asyncio.create_task(self._watch(self._proc, hang_timeout, busy))

    async def _watch(self, proc: asyncio.subprocess.Process, hang_timeout: float, busy: Callable[[], bool]) -> None:
        """While requests are in flight, ask /slots, which llama-server answers from its main loop
        (where /health is answered by the HTTP thread alone); a process that can't answer within
        `hang_timeout` is hung, and is killed so that its requests fail and the next one restarts it."""
        exited = asyncio.create_task(proc.wait())
        every = min(5.0, hang_timeout / 2)
        headers = {"Authorization": f"Bearer {self.api_key}"}
        try:
            async with async_client(base_url=self.base_url, headers=headers, timeout=hang_timeout) as client:
                while not exited.done():
                    await asyncio.wait({exited}, timeout=every)
                    if exited.done() or not busy() or self._stopping:
                        continue
                    try:
                        await client.get("/slots")
                    except httpx.TimeoutException:
                        if proc.returncode is None and busy():
                            self._kill_reason = (f"stopped responding for {hang_timeout:.0f}s with requests in "
                                                 "flight and was killed")
                            log.warning("[%s] llama-server %s", self.name, self._kill_reason)
                            with contextlib.suppress(ProcessLookupError):
                                os.killpg(proc.pid, signal.SIGKILL)
                    except httpx.TransportError:
                        pass  # it exited: the log pump reports that
        finally:
            exited.cancel()

    def kill(self) -> None:
        """SIGKILL to the process group, now; nothing waited for."""
        self._stopping = True
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    async def terminate(self, grace: float) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds."""
        # A stop is no hang, however long it takes: the hang watch leaves it alone from now on.
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        log.info("[%s] stopping (pid %d)", self.name, proc.pid)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                await asyncio.wait_for(proc.wait(), wait)
                break
            except TimeoutError:
                continue
