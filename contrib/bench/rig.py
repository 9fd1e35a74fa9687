"""What the benchmark runs things with: a llama-server of its own, a `llamagate serve`, the
synthetic upstream, and a process's CPU time and memory read from /proc."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "contrib"), str(ROOT / "tests")]

import default_model  # noqa: E402
from conftest import Server, free_port, llamagate_cmd, runners_of  # noqa: E402
from tinymodel import write_tiny_model  # noqa: E402

from supervisor.runtime.binary import find_llama_server  # noqa: E402

__all__ = [
    "Server",
    "free_port",
    "llamagate_cmd",
    "write_tiny_model",
    "default_model",
    "httpx",
    "create",
    "runners_of",
    "llama_server",
    "synthetic",
    "wait_up",
    "cpu_seconds",
    "rss",
    "peak_rss",
]

_TICK = os.sysconf("SC_CLK_TCK")


def wait_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} did not come up")


def create(srv: Server, name: str, gguf: Path) -> None:
    """`llamagate create` through the API (no CLI process to start): the blob, then the model."""
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    with gguf.open("rb") as f:
        httpx.post(f"{srv.url}/api/blobs/{digest}", content=f, timeout=300).raise_for_status()
    r = httpx.post(
        f"{srv.url}/api/create", json={"model": name, "files": {gguf.name: digest}, "stream": False}, timeout=300
    )
    r.raise_for_status()


def binary() -> Path:
    return find_llama_server("", Path(tempfile.gettempdir()) / "llamagate-bench-no-runtime").path


@contextmanager
def _serving(command: list[str], port: int) -> Iterator[str]:
    """A server process on `port`, once its /health answers: its URL."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def llama_server(*args: str):  # noqa: ANN201 (a context manager of the URL)
    """SmolLM2 in a llama-server of our own (one thread)."""
    port = free_port()
    return _serving(
        [str(binary()), "-m", str(default_model.fetch()), "--port", str(port), "-t", "1", "-c", "4096", *args], port
    )


def synthetic():  # noqa: ANN201 (a context manager of the URL)
    """The synthetic upstream (contrib/bench/synthetic.py) in a process of its own."""
    port = free_port()
    return _serving([sys.executable, str(Path(__file__).with_name("synthetic.py")), str(port)], port)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss(pid: int) -> int:
    return _status(pid, "VmRSS:")


def peak_rss(pid: int) -> int:
    return _status(pid, "VmHWM:")
