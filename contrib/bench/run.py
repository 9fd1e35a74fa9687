"""llamagate's cost, measured side by side with the same llama-server called directly in the same
run: added latency and time to first token (SmolLM2), per-chunk cost and concurrency (the
synthetic upstream, contrib/bench/synthetic.py), real-model throughput, cold start and swap, idle
footprint. Prints a table and writes results.json and PNG charts to OUT (default build/bench).

Usage: python contrib/bench/run.py [--quick] [--out OUT]
  --quick: a few iterations of everything (the test suite's smoke run), not figures to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rig  # noqa: E402
import uvloop  # noqa: E402

from proxy.llama import http11  # noqa: E402
from supervisor.runners.launch import LaunchSpec  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short poem about the sea."}]
LONG = [{"role": "user", "content": "Count from 1 to 300, one number a line."}]
SAMPLING = {"temperature": 0, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "seed": 1}


@dataclass
class Sizes:
    pairs: int  # alternating through/direct pairs per route
    chunks: int  # chunks of the per-chunk stream
    concurrency: tuple[int, ...]
    per_stream: int  # chunks of each concurrent stream
    tokens: int  # tokens per real-model throughput stream
    loads: int  # cold starts and swaps
    rounds: int  # per-chunk streams each side; `llamagate --version` runs


FULL = Sizes(pairs=150, chunks=20000, concurrency=(1, 8, 64, 256), per_stream=400, tokens=64, loads=5, rounds=5)
QUICK = Sizes(pairs=2, chunks=200, concurrency=(1, 8), per_stream=20, tokens=4, loads=1, rounds=1)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


# Requests ---------------------------------------------------------------------------------------


class Clients:
    """One keep-alive client per server (the hop's own, so both sides pay the same client cost)."""

    def __init__(self) -> None:
        self._clients: dict[tuple, http11.Client] = {}

    def of(self, url: str, headers: dict[str, str] | None = None) -> http11.Client:
        key = (url, tuple(sorted((headers or {}).items())))
        if key not in self._clients:
            self._clients[key] = http11.Client(url, {"Content-Type": "application/json", **(headers or {})})
        return self._clients[key]

    def close(self) -> None:
        for c in self._clients.values():
            c.close()


async def whole(client: http11.Client, path: str, body: dict) -> float:
    """Seconds for one non-streamed request."""
    payload = json.dumps(body).encode()
    t = time.perf_counter()
    r = await client.request("POST", path, payload)
    data = await r.aread()
    r.close()
    if r.status_code != 200:
        raise RuntimeError(f"{path}: {r.status_code} {data[:200]!r}")
    return time.perf_counter() - t


def _content(piece: bytes, sse: bool) -> int:
    """Chunks with generated text in one read: SSE events or NDJSON lines."""
    if sse:
        return piece.count(b'"content":"')
    return (
        piece.count(b'"content":"')
        - piece.count(b'"content":""')
        + piece.count(b'"response":"')
        - piece.count(b'"response":""')
    )


@dataclass
class Streamed:
    first: float  # seconds to the first chunk with text
    total: float
    chunks: int  # chunks with text
    gaps: list[float]  # seconds between reads that brought chunks


async def streamed(client: http11.Client, path: str, body: dict) -> Streamed:
    sse = path.startswith("/v1")
    payload = json.dumps(body).encode()
    t0 = time.perf_counter()
    r = await client.request("POST", path, payload)
    if r.status_code != 200:
        raise RuntimeError(f"{path}: {r.status_code} {(await r.aread())[:200]!r}")
    first, chunks, gaps, last, tail = 0.0, 0, [], 0.0, b""
    async for piece in r.aiter_raw():
        now = time.perf_counter()
        # Count whole events only: split at the last line end.
        data = tail + piece
        cut = data.rfind(b"\n") + 1
        n = _content(data[:cut], sse)
        tail = data[cut:]
        if n:
            if not first:
                first = now - t0
            else:
                gaps.append(now - last)
            last = now
            chunks += n
    r.close()
    return Streamed(first, time.perf_counter() - t0, chunks, gaps)


async def paired(
    through: Callable[[], Awaitable[float]],
    direct: Callable[[], Awaitable[float]],
    pairs: int,
    pid: int,
) -> dict:
    """Alternating pairs, after two warm-ups each: both sides' p50/p99 and the difference, and
    llamagate's CPU time a request (process `pid`), which a busy machine inflates far less."""
    for _ in range(2):
        await through()
        await direct()
    a, b, cpu = [], [], 0.0
    for _ in range(pairs):
        c0 = rig.cpu_seconds(pid)
        a.append(await through())
        cpu += rig.cpu_seconds(pid) - c0
        b.append(await direct())
    return {
        "cpu_ms_per_request": cpu / pairs * 1e3,
        "through_p50_ms": statistics.median(a) * 1e3,
        "direct_p50_ms": statistics.median(b) * 1e3,
        "through_p99_ms": pct(a, 0.99) * 1e3,
        "direct_p99_ms": pct(b, 0.99) * 1e3,
        "added_p50_ms": (statistics.median(a) - statistics.median(b)) * 1e3,
        "added_p99_ms": (pct(a, 0.99) - pct(b, 0.99)) * 1e3,
        "added_samples_ms": sorted((x - y) * 1e3 for x, y in zip(a, b)),
    }


# The real model ---------------------------------------------------------------------------------


def _upstream_bodies(srv: rig.Server, chat: dict, generate: dict) -> tuple[dict, dict]:
    """What llamagate sends llama-server for these /api/chat and /api/generate requests (its own
    translation, run here): the direct side sends the same, so that only llamagate's cost differs
    (and the prompt cache serves both alike). Generate's prompt is the template's rendering."""
    import msgspec

    from proxy.gateway import Gateway
    from proxy.ollama import schemas, translate
    from proxy.semantics import ModelDefaults
    from supervisor.config import Config

    os.environ["OLLAMA_MODELS"] = str(srv.models)
    gate = Gateway(Config.load())
    model = gate.catalog.require(chat["model"])
    num_ctx = gate.scheduler.num_ctx(model, None)
    bodies = []
    for request, kind, make in (
        (chat, schemas.ChatRequest, translate.chat_request),
        (generate, schemas.GenerateRequest, translate.generate_request),
    ):
        req = msgspec.convert(request, kind)
        body = make(req, ModelDefaults.of(model), num_ctx, req.model, model.capabilities)
        if kind is schemas.GenerateRequest:
            body = translate.with_context(body, "", [])
        bodies.append(json.loads(msgspec.json.encode(body)))
    return bodies[0], bodies[1]


async def real_model(srv: rig.Server, sizes: Sizes) -> dict:
    c = Clients()
    gate = c.of(srv.url)
    ours = {"model": "smollm2", "messages": PROMPT, "stream": False, "options": {**SAMPLING, "num_predict": 1}}
    await whole(gate, "/api/chat", ours)
    await whole(gate, "/api/embed", {"model": "smollm2", "input": "x"})
    (chat,) = [r for r in rig.runners_of(srv) if not r.embedding]
    (emb,) = [r for r in rig.runners_of(srv) if r.embedding]
    direct, embedder = c.of(chat.url, chat.headers), c.of(emb.url, emb.headers)
    one = {"messages": PROMPT, "max_tokens": 1, "stream": False, **SAMPLING}
    ours_generate = {
        "model": "smollm2",
        "prompt": PROMPT[0]["content"],
        "stream": False,
        "options": {**SAMPLING, "num_predict": 1},
    }
    chat_body, generate_body = _upstream_bodies(srv, ours, ours_generate)
    rendered = json.loads(
        (await (await direct.request("POST", "/apply-template", json.dumps({"messages": PROMPT}).encode())).aread())
    )["prompt"]
    generate_body["prompt"] = rendered
    texts = [f"Sentence number {i} about the sea and its waves." for i in range(16)]
    s = SAMPLING
    routes: dict[str, tuple[Callable, Callable]] = {
        "/api/chat": (lambda: whole(gate, "/api/chat", ours), lambda: whole(direct, "/v1/chat/completions", chat_body)),
        "/api/generate": (
            lambda: whole(gate, "/api/generate", ours_generate),
            lambda: whole(direct, "/completion", generate_body),
        ),
        "/api/embed (1 input)": (
            lambda: whole(gate, "/api/embed", {"model": "smollm2", "input": texts[0]}),
            lambda: whole(embedder, "/v1/embeddings", {"input": texts[:1]}),
        ),
        "/api/embed (16 inputs)": (
            lambda: whole(gate, "/api/embed", {"model": "smollm2", "input": texts}),
            lambda: whole(embedder, "/v1/embeddings", {"input": texts}),
        ),
        "/v1/chat/completions": (
            lambda: whole(gate, "/v1/chat/completions", {"model": "smollm2", **one}),
            lambda: whole(direct, "/v1/chat/completions", one),
        ),
    }
    # Fewer pairs where each takes the model a while (prompt processing is never cached for embeddings).
    fewer = {"/api/embed (1 input)": 5, "/api/embed (16 inputs)": 30}
    latency = {
        name: await paired(t, d, max(2, sizes.pairs // fewer.get(name, 1)), srv.proc.pid)
        for name, (t, d) in routes.items()
    }

    four = {"messages": PROMPT, "max_tokens": 4, "stream": True, **s}
    ttft_routes = {
        "/api/chat (NDJSON)": lambda: streamed(
            gate, "/api/chat", {"model": "smollm2", "messages": PROMPT, "options": {**s, "num_predict": 4}}
        ),
        "/v1/chat/completions (SSE)": lambda: streamed(gate, "/v1/chat/completions", {"model": "smollm2", **four}),
    }

    async def first(f: Callable[[], Awaitable[Streamed]]) -> float:
        return (await f()).first

    ttft = {
        name: await paired(
            lambda f=f: first(f),
            lambda: first(lambda: streamed(direct, "/v1/chat/completions", four)),
            sizes.pairs,
            srv.proc.pid,
        )
        for name, f in ttft_routes.items()
    }

    # Throughput: a long answer, same sampling both ways; tokens/s from the first token to the last.
    n = sizes.tokens
    long_ours = {"model": "smollm2", "messages": LONG, "options": {**s, "num_predict": n}}
    long_direct = {"messages": LONG, "max_tokens": n, "stream": True, **s}
    throughput = {}
    for streams in (1, 4):
        rates: dict[str, list[float]] = {"through": [], "direct": []}
        for _ in range(sizes.rounds):
            for side, (cl, path, body) in {
                "through": (gate, "/api/chat", long_ours),
                "direct": (direct, "/v1/chat/completions", long_direct),
            }.items():
                # Each stream its own connection: the clients' pools hold one per request in flight.
                t = time.perf_counter()
                results = await asyncio.gather(*(streamed(cl, path, body) for _ in range(streams)))
                wall = time.perf_counter() - t - min(r.first for r in results)
                rates[side].append(sum(max(r.chunks - 1, 0) for r in results) / wall)
        throughput[f"{streams} stream{'s' if streams > 1 else ''}"] = {
            "through_tokens_s": statistics.median(rates["through"]),
            "direct_tokens_s": statistics.median(rates["direct"]),
            "ratio": statistics.median(rates["through"]) / (statistics.median(rates["direct"]) or float("nan")),
        }
    c.close()
    return {"latency": latency, "ttft": ttft, "throughput": throughput}


# The synthetic upstream ---------------------------------------------------------------------------


async def per_chunk(gate_url: str, pid: int, upstream: str, sizes: Sizes) -> dict:
    c = Clients()
    gate, direct = c.of(gate_url), c.of(upstream)
    n = sizes.chunks
    bodies = {
        "/api/chat": (gate, "/api/chat", {"model": "synthetic", "messages": PROMPT, "options": {"num_predict": n}}),
        "/v1/chat/completions": (
            gate,
            "/v1/chat/completions",
            {"model": "synthetic", "messages": PROMPT, "max_tokens": n, "stream": True},
        ),
    }
    direct_body = {"messages": PROMPT, "max_tokens": n, "stream": True}
    out = {}
    for name, (cl, path, body) in bodies.items():
        await streamed(
            cl, path, {**body, **({"max_tokens": 8} if "max_tokens" in body else {"options": {"num_predict": 8}})}
        )
        rates, direct_rates, cpu = [], [], []
        for _ in range(sizes.rounds):
            c0 = rig.cpu_seconds(pid)
            r = await streamed(cl, path, body)
            cpu.append((rig.cpu_seconds(pid) - c0) / r.chunks)
            rates.append(r.chunks / (r.total - r.first))
            d = await streamed(direct, "/v1/chat/completions", direct_body)
            direct_rates.append(d.chunks / (d.total - d.first))
        out[name] = {
            "through_chunks_s": statistics.median(rates),
            "direct_chunks_s": statistics.median(direct_rates),
            "ratio": statistics.median(rates) / statistics.median(direct_rates),
            "cpu_us_per_chunk": statistics.median(cpu) * 1e6,
        }
    c.close()
    return out


async def concurrency(gate_url: str, pid: int, upstream: str, sizes: Sizes) -> dict:
    n = sizes.per_stream
    sides = {
        "direct": (upstream, "/v1/chat/completions", {"messages": PROMPT, "max_tokens": n, "stream": True}),
        "/api/chat": (gate_url, "/api/chat", {"model": "synthetic", "messages": PROMPT, "options": {"num_predict": n}}),
        "/v1/chat/completions": (
            gate_url,
            "/v1/chat/completions",
            {"model": "synthetic", "messages": PROMPT, "max_tokens": n, "stream": True},
        ),
    }
    out: dict[str, dict] = {side: {} for side in sides}
    for level in sizes.concurrency:
        for side, (url, path, body) in sides.items():
            c = Clients()
            client = c.of(url)
            t = time.perf_counter()
            results = await asyncio.gather(
                *(streamed(client, path, body) for _ in range(level)), return_exceptions=True
            )
            wall = time.perf_counter() - t
            c.close()
            ok = [r for r in results if isinstance(r, Streamed) and r.chunks == n]
            gaps = [g for r in ok for g in r.gaps]
            out[side][str(level)] = {
                "chunks_s": sum(r.chunks for r in ok) / wall,
                "p99_gap_ms": pct(gaps, 0.99) * 1e3 if gaps else 0.0,
                "errors": len(results) - len(ok),
                **({"peak_rss_mb": rig.peak_rss(pid) / 2**20} if side != "direct" else {}),
            }
    return out


# Loads and footprint ------------------------------------------------------------------------------


def _spawn_to_first_token(gguf: Path, num_ctx: int, i: int) -> tuple[float, float]:
    """llama-server's own spawn → /health 200 and spawn → the first token of a 1-token chat, with
    the flags llamagate uses. The first request a fresh llama-server serves takes some 250 ms
    longer than the next ones (its first graph, caches faulted in): it is the engine's part of a
    cold start, not the front end's, so the overhead is measured against this, not against
    ready + a warm first token."""
    spec = LaunchSpec(binary=rig.binary(), model_path=gguf, num_ctx=num_ctx, threads=1, parallel=1, context_shift=True)
    args = spec.args()
    port = rig.free_port()
    args[args.index("--port") + 1] = str(port)
    body = {"messages": [{"role": "user", "content": f"Hello number {i}"}], "max_tokens": 1}
    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rig.wait_up(f"http://127.0.0.1:{port}/health")
        ready = time.perf_counter() - t
        # One token: the whole answer is its first token (its end, as the through side counts
        # an answer whose token had no text).
        rig.httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60).raise_for_status()
        return ready, time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait()


async def loads(srv: rig.Server, gguf: Path, num_ctx: int, sizes: Sizes) -> dict:
    """Cold start: request → first token of an unloaded model, less llama-server's own spawn →
    first token. Swap: the same while the room for two runners is full (another model's runner
    stopped first)."""
    c = Clients()
    gate = c.of(srv.url)

    async def first_token(model: str, i: int) -> float:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"Hello number {i}"}],
            "options": {"num_predict": 1},
            "keep_alive": "5m",
        }
        s = await streamed(gate, "/api/chat", body)
        # The one token may be the end of the turn, which carries no text: then the answer's
        # end is when its first token came.
        return s.first or s.total

    cold, warm, swap, ready, own = [], [], [], [], []
    for i in range(sizes.loads):
        for model in ("smollm2", "other", "third"):
            await whole(gate, "/api/chat", {"model": model, "keep_alive": 0})
        cold.append(await first_token("smollm2", i))
        warm.append(await first_token("smollm2", i + 1000))
        await first_token("other", i)  # the room for two is full
        await first_token("third", i)  # smollm2 out (the soonest to expire), the third in
        swap.append(await first_token("smollm2", i + 2000))  # the other out, smollm2 in
        up, first = await asyncio.to_thread(_spawn_to_first_token, gguf, num_ctx, i)
        ready.append(up)
        own.append(first)
    c.close()
    direct = statistics.median(own)
    return {
        "cold_start_ms": statistics.median(cold) * 1e3,
        "swap_ms": statistics.median(swap) * 1e3,
        "llama_server_spawn_to_ready_ms": statistics.median(ready) * 1e3,
        "llama_server_spawn_to_first_token_ms": direct * 1e3,
        "first_token_loaded_ms": statistics.median(warm) * 1e3,
        "cold_start_overhead_ms": (statistics.median(cold) - direct) * 1e3,
        "swap_overhead_ms": (statistics.median(swap) - direct) * 1e3,
    }


def footprint(srv: rig.Server, sizes: Sizes) -> dict:
    """RSS of a server that has answered a few requests and loaded no model; `--version`."""
    for _ in range(20):
        rig.httpx.get(f"{srv.url}/api/tags")
    idle = rig.rss(srv.proc.pid)
    # With bytecode written, as an installed llamagate has it; CPU time beside the wall time,
    # which a loaded machine inflates far more.
    env = {k: v for k, v in srv.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times, cpu = [], []
    for _ in range(sizes.rounds * 3 - 2):
        t = time.perf_counter()
        proc = subprocess.Popen([*rig.llamagate_cmd(), "--version"], stdout=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        times.append(time.perf_counter() - t)
        cpu.append(usage.ru_utime + usage.ru_stime)
    return {"idle_rss_mb": idle / 2**20, "version_wall_ms": statistics.median(times) * 1e3,
            "version_cpu_ms": statistics.median(cpu) * 1e3}


# Output -----------------------------------------------------------------------------------------


def table(results: dict) -> str:
    rows = [
        "| Figure | through llamagate | llama-server direct | llamagate's cost | llamagate's CPU |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in results["real_model"]["latency"].items():
        rows.append(
            f"| {name}, 1 token, p50 / p99 | {r['through_p50_ms']:.2f} / {r['through_p99_ms']:.2f} ms | "
            f"{r['direct_p50_ms']:.2f} / {r['direct_p99_ms']:.2f} ms | "
            f"{r['added_p50_ms']:+.2f} / {r['added_p99_ms']:+.2f} ms | {r['cpu_ms_per_request']:.2f} ms a request |"
        )
    for name, r in results["real_model"]["ttft"].items():
        rows.append(
            f"| first token, {name}, p50 / p99 | {r['through_p50_ms']:.2f} / {r['through_p99_ms']:.2f} ms | "
            f"{r['direct_p50_ms']:.2f} / {r['direct_p99_ms']:.2f} ms | "
            f"{r['added_p50_ms']:+.2f} / {r['added_p99_ms']:+.2f} ms | {r['cpu_ms_per_request']:.2f} ms a request |"
        )
    for name, r in results["per_chunk"].items():
        rows.append(
            f"| chunks/s, one synthetic stream, {name} | {r['through_chunks_s']:,.0f} | {r['direct_chunks_s']:,.0f} | "
            f"×{r['ratio']:.2f} | {r['cpu_us_per_chunk']:.1f} µs a chunk |"
        )
    conc = results["concurrency"]
    for level in conc["direct"]:
        d = conc["direct"][level]
        for side in ("/api/chat", "/v1/chat/completions"):
            t = conc[side][level]
            rows.append(
                f"| {level} synthetic streams, {side}: chunks/s, p99 gap, errors | {t['chunks_s']:,.0f}, "
                f"{t['p99_gap_ms']:.1f} ms, {t['errors']} (peak RSS {t['peak_rss_mb']:.0f} MB) | "
                f"{d['chunks_s']:,.0f}, {d['p99_gap_ms']:.1f} ms, {d['errors']} | "
                f"×{t['chunks_s'] / d['chunks_s']:.2f} | |"
            )
    for name, r in results["real_model"]["throughput"].items():
        rows.append(
            f"| {results['model']}, tokens/s, {name} | {r['through_tokens_s']:.1f} | {r['direct_tokens_s']:.1f} | "
            f"×{r['ratio']:.3f} | |"
        )
    lo = results["loads"]
    rows.append(
        f"| cold start (request → first token) | {lo['cold_start_ms']:.0f} ms | "
        f"{lo['llama_server_spawn_to_first_token_ms']:.0f} ms spawn → first token (ready at "
        f"{lo['llama_server_spawn_to_ready_ms']:.0f} ms) | {lo['cold_start_overhead_ms']:+.0f} ms | |"
    )
    rows.append(
        f"| swap (room full: another model stopped first) | {lo['swap_ms']:.0f} ms | same | "
        f"{lo['swap_overhead_ms']:+.0f} ms | |"
    )
    f = results["footprint"]
    rows.append(f"| idle RSS, no model loaded | {f['idle_rss_mb']:.0f} MB | – | – | |")
    rows.append(f"| `llamagate --version` | {f['version_wall_ms']:.0f} ms | – | – | {f['version_cpu_ms']:.0f} ms |")
    return "\n".join(rows)


def charts(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in results["real_model"]["latency"].items():
        s = r["added_samples_ms"]
        ax.plot(s, [(i + 1) / len(s) for i in range(len(s))], label=name)
    ax.axvline(1, color="grey", ls=":", lw=1)
    ax.set(
        xlabel="through − direct, one pair (ms)",
        ylabel="fraction of pairs",
        title=f"Added latency, non-streamed 1-token requests ({results['model']})",
    )
    ax.set_xscale("symlog", linthresh=1)  # a busy machine's spread is tens of ms; the aim is 1
    ax.legend(fontsize=8)
    paths.append(out / "added_latency.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    conc = results["concurrency"]
    levels = [int(k) for k in conc["direct"]]
    for key, label, name in (
        ("chunks_s", "chunks/s, all streams", "concurrency_chunks.png"),
        ("p99_gap_ms", "p99 gap between chunks (ms)", "concurrency_gap.png"),
    ):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for side, figures in conc.items():
            ax.plot(
                levels,
                [figures[str(n)][key] for n in levels],
                marker="o",
                label="llama-server SSE direct (synthetic)" if side == "direct" else f"through llamagate {side}",
            )
        ax.set(xscale="log", xlabel="concurrent streams", ylabel=label, title=f"Synthetic upstream: {label}")
        ax.set_xticks(levels, [str(n) for n in levels])
        ax.legend(fontsize=8)
        paths.append(out / name)
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=rig.ROOT / "build" / "bench")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.time() - started - sum(phases.values()), 1)
        print(f"{name}: {phases[name]:.0f} s", file=sys.stderr, flush=True)

    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}",
        "load_average_before": os.getloadavg()[0],
        "model": "tiny random weights" if args.quick else "SmolLM2-135M Q4_1",
    }
    with tempfile.TemporaryDirectory() as tmp, rig.synthetic() as upstream:
        folder = Path(tmp)
        # The quick run's "real model" is a tiny random-weight one: it loads in a moment.
        gguf = rig.write_tiny_model(folder / "tiny.gguf") if args.quick else rig.default_model.fetch()
        # Room for two runners (the chat one and the embedding one); the swap makes room for a third.
        srv = rig.Server(
            folder,
            "--upstream",
            f"synthetic={upstream}",
            env={"OLLAMA_NUM_PARALLEL": "4", "OLLAMA_MAX_LOADED_MODELS": "2"},
        )
        try:
            results["footprint"] = footprint(srv, sizes)
            rig.create(srv, "smollm2", gguf)
            for name in ("other", "third"):
                rig.create(srv, name, rig.write_tiny_model(folder / f"{name}.gguf", extra_tokens=(f"<{name}>",)))
            phase("start")
            results["real_model"] = uvloop.run(real_model(srv, sizes))
            phase("real_model")
            results["per_chunk"] = uvloop.run(per_chunk(srv.url, srv.proc.pid, upstream, sizes))
            phase("per_chunk")
            results["concurrency"] = uvloop.run(concurrency(srv.url, srv.proc.pid, upstream, sizes))
            phase("concurrency")
            results["loads"] = uvloop.run(loads(srv, gguf, 512 if args.quick else 4096, sizes))
            phase("loads")
        finally:
            srv.stop()
    results["load_average_after"] = os.getloadavg()[0]
    results["seconds"] = round(time.time() - started, 1)
    results["phase_seconds"] = phases
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    (args.out / "table.md").write_text(text + "\n")
    pngs = charts(results, args.out)
    print(text)
    print(
        f"\n{results['date']}, {results['machine']}, load average {results['load_average_before']:.1f} before, "
        f"{results['load_average_after']:.1f} after, {results['seconds']:.0f} s"
    )
    print("wrote", args.out / "results.json", *pngs)


if __name__ == "__main__":
    main()
