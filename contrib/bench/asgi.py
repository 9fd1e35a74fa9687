"""uvicorn (uvloop, httptools) against granian serving the same app: /api/version latency and
/api/tags throughput (README, Performance). Needs `pip install granian`, not a dependency of ours.

Usage: python contrib/bench/asgi.py
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rig import ROOT, free_port, wait_up  # noqa: E402


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


def main() -> None:
    flags = {
        "uvicorn+uvloop+httptools": "uvicorn --factory proxy.asgi:app --loop uvloop --http httptools --no-access-log "
        "--log-level warning",
        "granian (uvloop)": "granian --interface asgi --factory proxy.asgi:app --loop uvloop --log-level warning "
        "--no-ws",
    }
    servers = {name: lambda port, f=f: [sys.executable, "-m", *f.split(), "--port", str(port)]
               for name, f in flags.items()}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OLLAMA_MODELS": tmp}
        for name, cmd in servers.items():
            port = free_port()
            proc = subprocess.Popen(cmd(port), env=env, cwd=ROOT)
            try:
                url = f"http://127.0.0.1:{port}"
                wait_up(url)
                lat = asyncio.run(_latency(f"{url}/api/version", 2000))
                rps = asyncio.run(_throughput(f"{url}/api/tags", 5, 16))
                print(
                    f"{name:28s} /api/version p50 {statistics.median(lat) * 1e3:.3f} ms  "
                    f"p99 {sorted(lat)[int(len(lat) * 0.99)] * 1e3:.3f} ms   /api/tags {rps:,.0f} req/s (16 clients)"
                )
            finally:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
