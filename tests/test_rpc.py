"""llama.cpp RPC for real: two `llamagate rpc-worker`s (rpc-server from the same build) on loopback
ports, SmolLM2 served with `--rpc` split over them. A real answer; a worker killed mid-stream ends
the client's stream with an error line within a second, and the next request fails at once with a
message naming the dead worker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import ollama
import pytest
from conftest import Server, free_port, llamagate_cmd, wait_until

from supervisor.runners.rpc import rpc_server_of

NAME = "smollm2:135m"


class Worker:
    def __init__(self, port: int, log) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([*llamagate_cmd(), "rpc-worker", "--port", str(port), "--threads", "1"],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        assert wait_until(self._listening, timeout=30), log.read_text()

    def _listening(self) -> bool:
        assert self.proc.poll() is None, "rpc-worker exited"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def workers(tmp_path_factory, llama_server_binary) -> Iterator[list[Worker]]:
    folder = tmp_path_factory.mktemp("workers")
    started = [Worker(free_port(), folder / f"w{i}.log") for i in range(2)]
    try:
        yield started
    finally:
        for w in started:
            if w.proc.poll() is None:
                w.kill()


@pytest.fixture(scope="module")
def split(tmp_path_factory, workers, server) -> Iterator[Server]:
    """A llamagate serving SmolLM2 (from the shared server's store) split over both workers."""
    srv = Server(tmp_path_factory.mktemp("split"), "--rpc", f"{NAME}={','.join(w.address for w in workers)}",
                 env={"OLLAMA_MODELS": str(server.models)})
    try:
        yield srv
    finally:
        srv.stop()


def test_rpc_worker_without_rpc_in_the_build_says_so(tmp_path):
    lone = tmp_path / "llama-server"
    lone.write_text("#!/bin/sh\n")
    lone.chmod(0o755)
    r = subprocess.run([*llamagate_cmd(), "rpc-worker"], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "LLAMAGATE_LLAMA_SERVER": str(lone)})
    assert r.returncode == 1 and f"{tmp_path} has no rpc-server" in r.stderr and "-DGGML_RPC=ON" in r.stderr


def test_rpc_worker_runs_the_builds_rpc_server(workers, llama_server_binary):
    exe = os.readlink(f"/proc/{workers[0].proc.pid}/exe")
    assert exe == str(rpc_server_of(llama_server_binary)) and exe.startswith(str(llama_server_binary.parent))


def test_a_model_split_over_two_workers_answers(split, workers):
    r = ollama.Client(host=split.url).chat(model=NAME, messages=[{"role": "user", "content": "Say hi"}],
                                           options={"num_predict": 8, "temperature": 0})
    assert r.done and r.eval_count == 8 and r.message.content.strip()
    assert f"--rpc {workers[0].address},{workers[1].address}" in split.log()
    # Both workers hold a connection from the llama-server (the layers they were given).
    assert all("Accepted client connection" in w.log_path.read_text() for w in workers)


def test_a_killed_worker_ends_the_stream_and_is_named(split, workers):
    body = {"model": NAME, "messages": [{"role": "user", "content": "Write a long story."}],
            "options": {"num_predict": 400, "temperature": 0}}
    with httpx.stream("POST", f"{split.url}/api/chat", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert "message" in json.loads(next(lines))
        dead = workers[1]
        dead.kill()
        killed = time.monotonic()
        rest = [json.loads(line) for line in lines if line]
    assert time.monotonic() - killed < 1.0
    assert "error" in rest[-1] and not rest[-1].get("done"), rest[-3:]
    started = time.monotonic()
    again = httpx.post(f"{split.url}/api/chat", json={**body, "stream": False}, timeout=30)
    assert time.monotonic() - started < 5
    assert again.status_code == 503 and dead.address in again.json()["error"], again.text
