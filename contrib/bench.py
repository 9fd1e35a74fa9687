"""Benchmarks (not tests): figures for README, measured against llama-server called directly.

  python contrib/bench.py asgi   — uvicorn (uvloop, httptools) vs granian serving the same app
                                   (needs `pip install granian`, not a dependency of ours)
  python contrib/bench.py proxy  — llama-server direct vs through llamagate, same run, SmolLM2
  python contrib/bench.py front  — a back-end llamagate direct vs through a front llamagate whose
                                   --upstream names two back ends (three llamagates), SmolLM2

Both start their own servers on free loopback ports with temporary stores.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "contrib"))

from conftest import Server, free_port  # noqa: E402

import default_model  # noqa: E402


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def _latency(url: str, n: int) -> list[float]:
    async with httpx.AsyncClient() as client:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            r = await client.get(url)
            r.raise_for_status()
            out.append(time.perf_counter() - t)
        return out


async def _throughput(url: str, seconds: float, concurrency: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            (await client.get(url)).raise_for_status()
            done += 1

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return done / seconds


def bench_asgi() -> None:
    servers = {
        "uvicorn+uvloop+httptools": lambda port: [sys.executable, "-m", "uvicorn", "--factory", "proxy.asgi:app",
                                                  "--port", str(port), "--loop", "uvloop", "--http", "httptools",
                                                  "--no-access-log", "--log-level", "warning"],
        "granian (uvloop)": lambda port: [sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
                                          "proxy.asgi:app", "--port", str(port), "--loop", "uvloop",
                                          "--log-level", "warning", "--no-ws"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OLLAMA_MODELS": tmp}
        for name, cmd in servers.items():
            port = free_port()
            proc = subprocess.Popen(cmd(port), env=env, cwd=ROOT)
            try:
                url = f"http://127.0.0.1:{port}"
                _wait_up(url)
                lat = asyncio.run(_latency(f"{url}/api/version", 2000))
                rps = asyncio.run(_throughput(f"{url}/api/tags", 5, 16))
                print(f"{name:28s} /api/version p50 {statistics.median(lat) * 1e3:.3f} ms  "
                      f"p99 {sorted(lat)[int(len(lat) * 0.99)] * 1e3:.3f} ms   /api/tags {rps:,.0f} req/s (16 clients)")
            finally:
                proc.terminate()
                proc.wait()


def _stream_times(client: httpx.Client, url: str, body: dict) -> tuple[float, float, int]:
    """(time to first token, total time, lines) of one streamed request."""
    t0 = time.perf_counter()
    first, lines = 0.0, 0
    with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line and not first:
                first = time.perf_counter() - t0
            lines += bool(line)
    return first, time.perf_counter() - t0, lines


def _report(results: dict[str, list[tuple[float, float, int]]], one: dict[str, list[float]]) -> None:
    """Medians of each path's 64-token runs (first token, total, rate) and of its 1-token requests."""
    for name, rs in results.items():
        ttft = statistics.median(r[0] for r in rs) * 1e3
        total = statistics.median(r[1] for r in rs)
        print(f"{name:22s} first token {ttft:7.1f} ms   64 tokens {total * 1e3:7.1f} ms   "
              f"{64 / total:6.1f} tokens/s   1-token request {statistics.median(one[name]) * 1e3:6.1f} ms")


def bench_proxy(runs: int = 10) -> None:
    gguf = default_model.fetch()
    with tempfile.TemporaryDirectory() as tmp:
        srv = Server(Path(tmp))
        try:
            srv.create("smollm2", gguf)
            prompt = [{"role": "user", "content": "Write a short poem about the sea."}]
            ours = {"model": "smollm2", "messages": prompt, "options": {"temperature": 0, "num_predict": 64}}
            with httpx.Client(timeout=120) as client:
                _stream_times(client, f"{srv.url}/api/chat", ours)  # loads the runner
                (pid,) = srv.runner_pids()
                environ = dict(v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if v)
                key = environ[b"LLAMA_API_KEY"].decode()
                port = next(int(p) for p in _listening_ports(pid))
                direct_url = f"http://127.0.0.1:{port}/v1/chat/completions"
                direct = {"messages": prompt, "temperature": 0, "max_tokens": 64, "stream": True,
                          "top_k": 40, "top_p": 0.9, "min_p": 0.0}
                headers = {"Authorization": f"Bearer {key}"}
                results: dict[str, list[tuple[float, float, int]]] = {"llama-server direct": [], "llamagate /api/chat": []}
                for _ in range(runs):
                    client.headers.update(headers)
                    results["llama-server direct"].append(_stream_times(client, direct_url, direct))
                    results["llamagate /api/chat"].append(_stream_times(client, f"{srv.url}/api/chat", ours))
                tiny = {**ours, "options": {"temperature": 0, "num_predict": 1}}
                tiny_direct = {**direct, "max_tokens": 1}
                one: dict[str, list[float]] = {"llama-server direct": [], "llamagate /api/chat": []}
                for _ in range(runs * 3):
                    one["llama-server direct"].append(_stream_times(client, direct_url, tiny_direct)[1])
                    one["llamagate /api/chat"].append(_stream_times(client, f"{srv.url}/api/chat", tiny)[1])
            _report(results, one)
        finally:
            srv.stop()


def bench_front(runs: int = 10) -> None:
    gguf = default_model.fetch()
    with tempfile.TemporaryDirectory() as tmp:
        backs: list[Server] = []
        front = None
        try:
            # Two back ends on one store (the model imported once), a front naming both.
            for part in ("b0", "b1", "front"):
                (Path(tmp) / part).mkdir()
            backs.append(Server(Path(tmp) / "b0"))
            backs[0].create("smollm2", gguf)
            backs.append(Server(Path(tmp) / "b1", env={"OLLAMA_MODELS": str(backs[0].models)}))
            front = Server(Path(tmp) / "front", "--upstream", "smollm2=" + ",".join(b.url for b in backs))
            prompt = [{"role": "user", "content": "Write a short poem about the sea."}]
            body = {"model": "smollm2", "messages": prompt, "options": {"temperature": 0, "num_predict": 64}}
            tiny = {**body, "options": {"temperature": 0, "num_predict": 1}}
            paths = {"back end direct": [f"{b.url}/api/chat" for b in backs],
                     "through the front": [f"{front.url}/api/chat"] * 2}
            with httpx.Client(timeout=120) as client:
                for b in backs:
                    _stream_times(client, f"{b.url}/api/chat", body)  # loads each back end's runner
                results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in paths}
                one: dict[str, list[float]] = {name: [] for name in paths}
                for i in range(runs):
                    for name, urls in paths.items():
                        results[name].append(_stream_times(client, urls[i % 2], body))
                for i in range(runs * 3):
                    for name, urls in paths.items():
                        one[name].append(_stream_times(client, urls[i % 2], tiny)[1])
            _report(results, one)
        finally:
            for srv in [front, *backs]:
                if srv:
                    srv.stop()


def _listening_ports(pid: int) -> list[int]:
    """TCP ports a process listens on, from /proc (no psutil needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "0A" and parts[9] in inodes:
            ports.append(int(parts[1].split(":")[1], 16))
    return ports


if __name__ == "__main__":
    {"asgi": bench_asgi, "proxy": bench_proxy, "front": bench_front}[sys.argv[1]]()
