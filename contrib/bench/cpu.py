"""llamagate's own CPU per request on the hot routes, with nothing else in the way: the synthetic
upstream (contrib/bench/synthetic.py) answers at once, requests go back to back, and the CPU time
comes from /proc/<pid>/schedstat (nanoseconds, where /proc/<pid>/stat counts 10 ms ticks).
Non-streamed /api/chat and /v1/chat/completions and a 1-token /api/chat stream; then the same
small request sent to the synthetic upstream directly, for its own wall time.

Usage: python contrib/bench/cpu.py [REQUESTS]   (per route; default 600)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "contrib"), str(ROOT / "contrib" / "bench")]

import rig  # noqa: E402

from proxy.llama import http11  # noqa: E402

HI = [{"role": "user", "content": "hi"}]
ROUTES = {
    "/api/chat": ("/api/chat", {"model": "synthetic", "messages": HI, "stream": False, "options": {"num_predict": 1}}),
    "/v1/chat/completions": ("/v1/chat/completions", {"model": "synthetic", "messages": HI, "max_tokens": 1}),
    "/api/chat, streamed": ("/api/chat", {"model": "synthetic", "messages": HI, "options": {"num_predict": 1}}),
}


def _cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


async def _timed(client: http11.Client, path: str, body: bytes, n: int, pid: int | None) -> tuple[float, float]:
    """(wall ms, llamagate CPU ms) per request, after 30 warm-ups."""
    for _ in range(30):
        r = await client.request("POST", path, body)
        await r.aread()
        r.close()
    cpu, start = _cpu_ns(pid) if pid else 0, time.perf_counter()
    for _ in range(n):
        r = await client.request("POST", path, body)
        data = await r.aread()
        r.close()
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {data[:200]!r}")
    wall = (time.perf_counter() - start) / n * 1e3
    return wall, ((_cpu_ns(pid) - cpu) / n / 1e6 if pid else 0.0)


async def _run(url: str, pid: int, upstream: str, n: int) -> None:
    gate, direct = http11.Client(url, {"Content-Type": "application/json"}), \
        http11.Client(upstream, {"Content-Type": "application/json"})
    try:
        for name, (path, body) in ROUTES.items():
            wall, cpu = await _timed(gate, path, json.dumps(body).encode(), n, pid)
            print(f"{name:24s} {wall:6.3f} ms a request, llamagate's CPU {cpu:6.3f} ms")
        body = json.dumps({"messages": HI, "max_tokens": 1}).encode()
        wall, _ = await _timed(direct, "/v1/chat/completions", body, n, None)
        print(f"{'synthetic upstream alone':24s} {wall:6.3f} ms a request")
    finally:
        gate.close()
        direct.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    with tempfile.TemporaryDirectory() as tmp, rig.synthetic() as upstream:
        srv = rig.Server(Path(tmp), "--upstream", f"synthetic={upstream}")
        try:
            asyncio.run(_run(srv.url, srv.proc.pid, upstream, n))
        finally:
            srv.stop()
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
