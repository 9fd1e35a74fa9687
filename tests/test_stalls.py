"""The event loop never stalls: while a token stream runs, each slow piece of disk work (a big
GGUF header read on a model's first use, a verbose /api/show, create's GGUF reads, a blob
upload's writes and fsync, a download's writes and fsync) runs, and the largest gap between
the stream's chunks is measured. Done on the loop, each would freeze the stream for its whole
duration (0.4-1 s here); off it, the stream keeps its pace."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Server
from registries import OllamaRegistry
from supervisor.models.gguf import read_gguf
from supervisor.models.store import MODEL
from tinymodel import write_tiny_model

# A stall shows as a gap of the work's whole duration (each takes 0.2-1 s here); the stream's
# own gaps stay well under this. On a crowded machine every gap
# grows, so the bound is also at least 5 times the largest gap of an idle stretch before.
MAX_GAP = 0.3
# Bytes uploaded and pulled: their fsyncs take a while. The default run's 32 MiB keeps it
# quick; `LLAMAGATE_STALL_MIB=512` (the long suite's README command) makes the fsync stall plain.
BIG = int(os.environ.get("LLAMAGATE_STALL_MIB", "32")) << 20


# The stream is read in a process of its own: in this one, the test's own uploads and its
# loopback registry would hold the interpreter's lock and delay the reader, not the server.
_READER = """
import sys, time, httpx
body = {"model": "tiny", "prompt": "go", "stream": True, "options": {"num_predict": 1_000_000}}
while True:  # a generation is capped (10 x num_ctx tokens): the next one follows at once
    with httpx.stream("POST", sys.argv[1] + "/api/generate", json=body, timeout=60) as r:
        for _ in r.iter_lines():
            print(time.monotonic(), flush=True)
"""


class Stream:
    """A long /api/generate stream from the tiny model, each chunk's arrival time recorded."""

    def __init__(self, url: str) -> None:
        self.times: list[float] = []
        self._proc = subprocess.Popen([sys.executable, "-c", _READER, url], stdout=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while len(self.times) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.times) >= 20, "the stream never started"
        start = time.monotonic()
        time.sleep(3)
        self.bound = max(MAX_GAP, 5 * self.largest_gap(start, time.monotonic())[0])

    def _read(self) -> None:
        for line in self._proc.stdout:
            self.times.append(float(line))  # CLOCK_MONOTONIC: the same clock in every process

    def largest_gap(self, start: float, end: float) -> tuple[float, int]:
        """The longest wait for a chunk between `start` and `end`, and the chunks in between."""
        inside = [t for t in self.times if start <= t <= end]
        edges = [start, *inside, end]
        return max(b - a for a, b in zip(edges, edges[1:])), len(inside)

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._thread.join(10)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_gguf: Path, registry: OllamaRegistry, llama_server_binary) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("stalls"), env={
        "LLAMAGATE_REGISTRY_MIRRORS": f"registry.ollama.ai={registry.url}",
    })
    try:
        server.create("tiny", tiny_gguf)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stream(srv: Server) -> Iterator[Stream]:
    s = Stream(srv.url)
    yield s
    s.close()


def _during(stream: Stream, work: Callable[[], object]) -> None:
    """Run `work` while the stream runs; returns the largest gap between chunks meanwhile,
    checked against the stream's bound."""
    start = time.monotonic()
    work()
    end = time.monotonic()
    time.sleep(0.1)  # a chunk held back by a stall arrives late, after the work
    gap, chunks = stream.largest_gap(start, end + 0.05)
    assert chunks >= 5, "the stream did not run during the work"
    assert gap < stream.bound, f"{work.__name__} stalled the stream for {gap:.2f}s (bound {stream.bound:.2f}s)"


def _upload(url: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.post(f"{url}/api/blobs/{digest}", content=data, timeout=120)
    assert r.status_code == 201, r.text
    return digest


def test_a_blob_upload_does_not_stall_a_stream(srv: Server, stream: Stream):
    data = os.urandom(BIG)

    def upload() -> None:
        _upload(srv.url, data)

    _during(stream, upload)


@pytest.fixture(scope="module")
def wide_gguf(tmp_path_factory) -> Path:
    """A 300k-string header: a vocabulary a little larger than Gemma's (262k)."""
    return write_tiny_model(tmp_path_factory.mktemp("wide") / "wide.gguf", padding=300_000)


def test_a_header_read_in_a_thread_lets_the_other_threads_run(wide_gguf: Path):
    """The cause of a stall once seen through the server: a thread that lets go of the
    interpreter's lock for a system call and takes it straight back is never made to yield it,
    so the event loop waited. Read in 8 KiB pieces, a verbose read of the wide header kept
    another thread from running for 80-140 ms at a stretch; in 1 MiB pieces, 5-10 ms. The best
    of three runs, so that a crowded machine does not fail it."""
    longest = []
    for _ in range(3):
        reader = threading.Thread(target=read_gguf, args=(wide_gguf,), kwargs={"max_array": 1 << 62})
        waits, last = [], time.perf_counter()
        reader.start()
        while reader.is_alive():
            time.sleep(0)  # lets go of the lock, as the event loop does when it polls
            now = time.perf_counter()
            waits.append(now - last)
            last = now
        longest.append(max(waits))
    assert min(longest) < 0.04, longest


def test_create_and_a_first_use_and_a_verbose_show_do_not_stall_a_stream(srv: Server, stream: Stream,
                                                                          wide_gguf: Path):
    """Create, a first use and a verbose show of the wide header: each took 0.2-1 s in our
    runs, too varied for a floor on its length (a floor failed as often as a stall would), so
    only the gaps are checked: a stall past the bound fails."""
    digest = _upload(srv.url, wide_gguf.read_bytes())

    def create() -> None:
        body = {"model": "padded", "files": {"padded.gguf": digest}, "stream": False}
        r = httpx.post(f"{srv.url}/api/create", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["status"] == "success", r.text

    _during(stream, create)

    def first_use() -> None:
        # The model's first request reads its header (capabilities) before anything else.
        body = {"model": "padded", "prompt": "hi", "stream": False, "keep_alive": 0, "options": {"num_predict": 2}}
        r = httpx.post(f"{srv.url}/api/generate", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["done"], r.text

    _during(stream, first_use)

    def verbose() -> None:
        r = httpx.post(f"{srv.url}/api/show", json={"model": "padded", "verbose": True}, timeout=60)
        assert r.status_code == 200 and len(r.json()["model_info"]["llamagate.test.padding"]) == 300_000

    _during(stream, verbose)


def test_a_pull_does_not_stall_a_stream(srv: Server, stream: Stream, registry: OllamaRegistry):
    registry.publish("library/big:latest", [(MODEL, os.urandom(BIG))])

    def pull() -> None:
        r = httpx.post(f"{srv.url}/api/pull", json={"model": "big", "stream": False}, timeout=120)
        assert r.status_code == 200 and r.json()["status"] == "success", r.text

    _during(stream, pull)
