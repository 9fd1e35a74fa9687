"""The hop's HTTP client, chosen with numbers: httpx, aiohttp and proxy/llama/http11.py sending the
same small POST (/tokenize) to one llama-server over loopback keep-alive, in alternating rounds.
Prints each client's median and p99 per request, and its CPU per request.

Usage: python contrib/bench/hop_clients.py [ROUNDS]   (needs aiohttp: pip install aiohttp)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "contrib"), str(ROOT / "contrib" / "bench")]

import aiohttp  # noqa: E402
import httpx  # noqa: E402

from proxy.llama import http11  # noqa: E402
from rig import llama_server  # noqa: E402

BODY = json.dumps({"content": "Hello there, how are you?", "add_special": True}).encode()
PER_ROUND = 200


async def _httpx(url: str, n: int) -> list[float]:
    async with httpx.AsyncClient(base_url=url, headers={"Content-Type": "application/json"}) as c:
        await c.post("/tokenize", content=BODY)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            r = await c.send(c.build_request("POST", "/tokenize", content=BODY), stream=True)
            await r.aread()
            await r.aclose()
            out.append(time.perf_counter() - t)
        return out


async def _aiohttp(url: str, n: int) -> list[float]:
    conn = aiohttp.TCPConnector(keepalive_timeout=4)
    async with aiohttp.ClientSession(url, connector=conn, headers={"Content-Type": "application/json"}) as s:
        async with s.post("/tokenize", data=BODY) as r:
            await r.read()
        out = []
        for _ in range(n):
            t = time.perf_counter()
            async with s.post("/tokenize", data=BODY) as r:
                await r.read()
            out.append(time.perf_counter() - t)
        return out


async def _http11(url: str, n: int) -> list[float]:
    c = http11.Client(url, {"Content-Type": "application/json"})
    r = await c.request("POST", "/tokenize", BODY)
    await r.aread()
    r.close()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = await c.request("POST", "/tokenize", BODY)
        await r.aread()
        r.close()
        out.append(time.perf_counter() - t)
    c.close()
    return out


CLIENTS = {"httpx": _httpx, "aiohttp": _aiohttp, "http11 (ours)": _http11}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    import uvloop

    with llama_server() as url:
        times: dict[str, list[float]] = {k: [] for k in CLIENTS}
        cpu: dict[str, float] = dict.fromkeys(CLIENTS, 0.0)
        for _ in range(rounds):
            for name, fn in CLIENTS.items():
                c0 = time.process_time()
                times[name] += uvloop.run(fn(url, PER_ROUND))
                cpu[name] += time.process_time() - c0
        direct = statistics.median(times["http11 (ours)"])
        print(
            f"{'client':16s} {'p50':>9s} {'p99':>9s} {'CPU/request':>12s}  (POST /tokenize, {rounds * PER_ROUND} each)"
        )
        for name, ts in times.items():
            ts.sort()
            print(
                f"{name:16s} {ts[len(ts) // 2] * 1e3:7.3f}ms {ts[int(len(ts) * 0.99)] * 1e3:7.3f}ms "
                f"{cpu[name] / len(ts) * 1e6:9.0f} µs  (+{(statistics.median(ts) - direct) * 1e3:.3f} ms)"
            )


if __name__ == "__main__":
    main()
