"""Load and soak: concurrent clients of the `ollama` library running mixed requests against a
real server (chat and generate with short outputs, embed, tags, show, and pull of a model
already in the store), with the server's open file descriptors, threads and RSS sampled.

Used by tests/long/test_soak.py (10 minutes, 32 clients: `contrib/soak.sh`) and by the default
run's bounded smoke (tests/test_soak_smoke.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import ollama

from conftest import Server
from registries import Cdn, OllamaRegistry
from supervisor.models.store import MODEL

SAMPLE_EVERY = 5.0  # seconds
# What "flat" allows between the baseline sample (minute 2 of the soak) and the last one.
FD_BOUND = 16
THREAD_BOUND = 8
RSS_BOUND = 32 << 20  # bytes


@dataclass
class Sample:
    at: float  # seconds since the start
    fds: int
    threads: int
    rss: int  # bytes


@dataclass
class Figures:
    seconds: float
    clients: int
    requests: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    busy_503: int = 0  # intended: OLLAMA_MAX_QUEUE's "server busy"
    errors: list[str] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)  # the server's WARNING and ERROR lines
    samples: list[Sample] = field(default_factory=list)
    baseline_at: float = 0.0

    def baseline(self) -> Sample:
        return next(s for s in self.samples if s.at >= self.baseline_at)

    def growth(self) -> dict[str, int]:
        first, last = self.baseline(), self.samples[-1]
        return {"fds": last.fds - first.fds, "threads": last.threads - first.threads, "rss": last.rss - first.rss}

    def flat(self) -> bool:
        g = self.growth()
        return g["fds"] <= FD_BOUND and g["threads"] <= THREAD_BOUND and g["rss"] <= RSS_BOUND

    def write(self, path: Path) -> None:
        data = asdict(self)
        data["growth"] = self.growth()
        data["bounds"] = {"fds": FD_BOUND, "threads": THREAD_BOUND, "rss": RSS_BOUND}
        data["errors"] = self.errors[:50]
        data["log_problems"] = self.log_problems[:100]
        data["error_count"] = len(self.errors)
        data["flat"] = self.flat()
        path.write_text(json.dumps(data, indent=2) + "\n")


def sample(pid: int, at: float) -> Sample:
    proc = Path(f"/proc/{pid}")
    status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
    return Sample(round(at, 1), len(list((proc / "fd").iterdir())), int(status["Threads"]),
                  int(status["VmRSS"].split()[0]) * 1024)


KINDS = ["chat", "chat_stream", "generate", "generate_stream", "embed", "tags", "show", "pull"]
SHORT = {"num_predict": 8, "temperature": 0}


async def _one(client: ollama.AsyncClient, kind: str, model: str, cached: str, n: int) -> None:
    prompt = f"Say a number. {n}"
    if kind == "chat":
        r = await client.chat(model=model, messages=[{"role": "user", "content": prompt}], options=SHORT)
        assert r.done and r.message.role == "assistant"
    elif kind == "chat_stream":
        parts = [c async for c in await client.chat(model=model, messages=[{"role": "user", "content": prompt}],
                                                     options=SHORT, stream=True)]
        assert parts[-1].done
    elif kind == "generate":
        r = await client.generate(model=model, prompt=prompt, options=SHORT)
        assert r.done
    elif kind == "generate_stream":
        parts = [c async for c in await client.generate(model=model, prompt=prompt, options=SHORT, stream=True)]
        assert parts[-1].done
    elif kind == "embed":
        r = await client.embed(model=model, input=[prompt, "another"])
        assert len(r.embeddings) == 2 and len(r.embeddings[0]) > 0
    elif kind == "tags":
        assert any(m.model == model for m in (await client.list()).models)
    elif kind == "show":
        assert (await client.show(model)).capabilities
    elif kind == "pull":
        assert (await client.pull(cached)).status == "success"


async def run(url: str, pid: int, seconds: float, clients: int, model: str, cached: str,
              baseline_at: float) -> Figures:
    """`clients` loops, each going through KINDS in its own order, for `seconds`."""
    figures = Figures(seconds=seconds, clients=clients, baseline_at=baseline_at)
    kinds: Counter[str] = Counter()
    start = time.monotonic()
    deadline = start + seconds

    async def client_loop(i: int) -> None:
        client = ollama.AsyncClient(host=url, timeout=300)
        n = i
        while time.monotonic() < deadline:
            kind = KINDS[n % len(KINDS)]
            n += 1
            try:
                await _one(client, kind, model, cached, n)
                kinds[kind] += 1
            except ollama.ResponseError as e:
                if e.status_code == 503 and "server busy" in str(e):
                    figures.busy_503 += 1
                else:
                    figures.errors.append(f"{kind}: {e.status_code} {e}")
            except Exception as e:  # noqa: BLE001 - every failure is a figure of the soak
                figures.errors.append(f"{kind}: {type(e).__name__}: {e}")
            figures.requests += 1

    async def sampler() -> None:
        while time.monotonic() < deadline:
            figures.samples.append(sample(pid, time.monotonic() - start))
            await asyncio.sleep(min(SAMPLE_EVERY, max(seconds / 10, 0.5)))

    await asyncio.gather(sampler(), *(client_loop(i) for i in range(clients)))
    figures.samples.append(sample(pid, time.monotonic() - start))
    figures.by_kind = dict(kinds)
    return figures


@contextmanager
def soak_server(tmp: Path, smollm2: Path, tiny_gguf: Path) -> Iterator[tuple[Server, str]]:
    """A server with SmolLM2 as `smollm2:135m` and the tiny model pulled from a loopback
    registry as `cached` (so that pulling it again finds every blob in the store); 4 slots, a
    short context, and a queue small enough that a burst may meet its intended 503."""
    cdn = Cdn()
    registry = OllamaRegistry(cdn)
    registry.publish("library/cached:latest", [(MODEL, tiny_gguf.read_bytes())])
    srv = Server(tmp, env={
        "LLAMAGATE_REGISTRY_MIRRORS": f"registry.ollama.ai={registry.url}",
        "OLLAMA_NUM_PARALLEL": "4",
        "OLLAMA_CONTEXT_LENGTH": "1024",
        "OLLAMA_MAX_QUEUE": "24",
    })
    try:
        srv.create("smollm2:135m", smollm2)
        r = httpx.post(f"{srv.url}/api/pull", json={"model": "cached", "stream": False}, timeout=60)
        assert r.status_code == 200, r.text
        yield srv, "cached"
    finally:
        srv.stop()
        registry.close()
        cdn.close()


def log_problems(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line or "Traceback" in line]
