"""The test rig: real `llamagate serve` processes, a real llama-server and real GGUF models."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "contrib"))

import default_model  # noqa: E402
import onefile_build  # noqa: E402

from registries import Cdn, OllamaRegistry  # noqa: E402
from supervisor.runtime.binary import find_llama_server  # noqa: E402
from tinymodel import write_tiny_model  # noqa: E402


# The long suites (the soak, the SIGKILL sequence) run only when asked: contrib/soak.sh, or
# LLAMAGATE_LONG=1 contrib/test.sh tests/long.
collect_ignore = [] if os.environ.get("LLAMAGATE_LONG") else ["long"]


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.path.name == "test_onefile.py" and "onefile" in item.fixturenames for item in session.items):
        onefile_build.start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llamagate_cmd() -> list[str]:
    return [sys.executable, "-c", "from proxy.cli.entry import main; main()"]  # the console script's


def hermetic_home(home: Path) -> dict[str, str]:
    """A home of the test's own: the developer's runtime cache (which would win the llama-server
    search), config file (its upstreams and settings) and ~/.ollama stay out of every test server,
    as do the OLLAMA_* and LLAMAGATE_* variables of the shell that runs the tests."""
    return {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share")}


class Server:
    """A `llamagate serve` subprocess on a free port with its own model store."""

    def __init__(self, tmp: Path, *extra: str, env: dict[str, str] | None = None, bind: str = "127.0.0.1",
                 port: int | None = None) -> None:
        self.port = port or free_port()  # a given one: a server started again where it was
        self.url = f"http://127.0.0.1:{self.port}"
        self.models = tmp / "models"
        self.log_path = tmp / "serve.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "LLAMAGATE_"))},
            **hermetic_home(tmp / "home"),
            "OLLAMA_HOST": f"{bind}:{self.port}",
            "OLLAMA_MODELS": str(self.models),
            "LLAMAGATE_THREADS": "1",
            **(env or {}),
        }
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*llamagate_cmd(), "serve", *extra], env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llamagate serve exited:\n{self.log()}")
            try:
                if httpx.get(self.url, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"llamagate serve did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*llamagate_cmd(), *args], env=self.env, capture_output=True, text=True, input=input,
            check=check, timeout=300,
        )

    def create(self, name: str, gguf: Path, *lines: str) -> None:
        modelfile = self.models.parent / f"{name.replace(':', '_').replace('/', '_')}.Modelfile"
        modelfile.write_text("\n".join([f"FROM {gguf}", *lines]) + "\n")
        self.cli("create", name, "-f", str(modelfile))

    def runner_pids(self) -> list[int]:
        """The llama-server processes serving this server's store."""
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"llama-server" in part for part in cmdline[:1]) and any(
                str(self.models).encode() in part for part in cmdline
            ):
                pids.append(int(proc.name))
        return pids

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def fake_upstream_server(tmp: Path, env: dict[str, str] | None = None) -> Server:
    """A `llamagate serve` whose llama-server is tests/fake_llama_server.py; `.requests()` lists
    what that fake was started with and sent."""
    log = tmp / "requests.jsonl"
    wrapper = tmp / "llama-server"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'fake_llama_server.py'} \"$@\"\n")
    wrapper.chmod(0o755)
    srv = Server(tmp, "--llama-server", str(wrapper), env={"FAKE_LLAMA_LOG": str(log), **(env or {})})
    srv.requests = lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return srv


# The hang watchdog's timeout of the shared fake server (seconds), short for the fault tests.
FAKE_HANG_TIMEOUT = 2


@pytest.fixture(scope="session")
def fake_server(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Server]:
    """One shared `llamagate serve` in front of tests/fake_llama_server.py, with tiny:latest, for
    the fault, corpus and fuzz tests; a name that parses is pulled from a dead registry."""
    tmp = tmp_path_factory.mktemp("fake")
    srv = fake_upstream_server(tmp, env={"LLAMAGATE_HANG_TIMEOUT": f"{FAKE_HANG_TIMEOUT}s",
                                         "LLAMAGATE_REGISTRY_MIRRORS": "registry.ollama.ai=http://127.0.0.1:9"})
    try:
        srv.create("tiny", tiny_gguf)
        yield srv
    finally:
        srv.stop()


def runner_of(srv: Server) -> tuple[str, dict[str, str]]:
    """The URL of the one llama-server running, and its key (read from its environment)."""
    (pid,) = srv.runner_pids()
    port = re.findall(r"ready on port (\d+)", srv.log())[-1]
    env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
    return f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {env[b'LLAMA_API_KEY'].decode()}"}


@dataclass
class Runner:
    url: str
    headers: dict[str, str]  # its key
    embedding: bool
    num_ctx: int


def runners_of(srv: Server) -> list[Runner]:
    """Every llama-server a server runs: where each listens (read from /proc), its key, whether
    it embeds, its context."""
    out = []
    for pid in srv.runner_pids():
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
        sockets = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if (target := os.readlink(fd)).startswith("socket:["):
                    sockets.add(target[8:-1])
        (port,) = [int(f[1].split(":")[1], 16) for f in (line.split() for line in Path("/proc/net/tcp").read_text()
                                                           .splitlines()[1:]) if f[3] == "0A" and f[9] in sockets]
        out.append(Runner(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {env[b'LLAMA_API_KEY'].decode()}"},
                          "--embeddings" in args, int(args[args.index("--ctx-size") + 1])))
    return out


def slot_busy(srv: Server) -> bool:
    """Whether llama-server's one slot is generating."""
    url, headers = runner_of(srv)
    return any(slot["is_processing"] for slot in httpx.get(f"{url}/slots", headers=headers, timeout=5).json())


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return default_model.fetch()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def padded_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a header as slow to read as a big vocabulary's: 150k strings take
    0.4-0.5 s to read, about twice that verbose."""
    return write_tiny_model(tmp_path_factory.mktemp("padded") / "padded.gguf", padding=150_000)


@pytest.fixture(scope="session")
def llama_server_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite needs a real llama-server: missing one is a failure, not a skip."""
    return find_llama_server("", tmp_path_factory.mktemp("no-runtime")).path


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2: Path, tiny_gguf: Path, llama_server_binary: Path) -> Iterator[Server]:
    """One shared server with smollm2:135m and tiny:latest imported through `llamagate create`."""
    srv = Server(tmp_path_factory.mktemp("server"))
    try:
        srv.create("smollm2:135m", smollm2)
        srv.create("tiny", tiny_gguf)
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path, smollm2: Path, tiny_gguf: Path, llama_server_binary: Path) -> Iterator[Server]:
    """A server of the test's own, for tests that kill things or count starts."""
    srv = Server(tmp_path)
    try:
        srv.create("tiny", tiny_gguf)
        yield srv
    finally:
        srv.stop()


_STUCK = """#!{python}
import http.server, sys, threading, time
if "--list-devices" in sys.argv:  # as llama-server answers it on a machine without a GPU
    print("Available devices:\\n  (none)")
    sys.exit()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503)
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print("main: server is listening on http://127.0.0.1:%d" % srv.server_address[1], flush=True)
threading.Thread(target=srv.serve_forever, daemon=True).start()
while True:
    print("load_tensors: loading", flush=True)  # progress: never stuck, never ready
    time.sleep(0.2)
"""


@pytest.fixture
def loading(tmp_path, tiny_gguf) -> Iterator[Server]:
    """A llama-server that keeps loading and never becomes ready."""
    fake = tmp_path / "bin" / "llama-server"
    fake.parent.mkdir()
    fake.write_text(_STUCK.format(python=sys.executable))
    fake.chmod(0o755)
    srv = Server(tmp_path, "--llama-server", str(fake))
    srv.create("tiny", tiny_gguf)
    yield srv
    srv.stop()


def loader_pids(srv: Server) -> list[int]:
    """The fake llama-servers (scripts: their command line starts with python) this server started."""
    return [pid for pid in _children(srv) if "bin/llama-server" in Path(f"/proc/{pid}/cmdline").read_text()]


def _children(srv: Server) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(srv.proc.pid):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def cdn() -> Iterator[Cdn]:
    """The loopback CDN of tests/registries.py, for the pull and push tests."""
    server = Cdn()
    yield server
    for blob in server.blobs.values():
        blob.resume.set()
    server.close()


@pytest.fixture(scope="module")
def registry(cdn: Cdn) -> Iterator[OllamaRegistry]:
    """The loopback registry.ollama.ai of tests/registries.py, its blobs on `cdn`."""
    server = OllamaRegistry(cdn)
    yield server
    server.close()
