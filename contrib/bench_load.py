"""Measure load times: llama-server's own (spawn → /health 200), llamagate's runner start (the
same, as its log reports it), cold start (request → first token for an unloaded model), swap (the
same with OLLAMA_MAX_LOADED_MODELS=1 and another model loaded) and the first token of a loaded
model, for the tiny test model and SmolLM2. Prints the README's table (medians).

Usage: python contrib/bench_load.py [RUNS]
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "contrib"), str(ROOT / "tests")]

import default_model  # noqa: E402
from tinymodel import write_tiny_model  # noqa: E402

from supervisor.runtime.binary import find_llama_server  # noqa: E402
from supervisor.runners.launch import LaunchSpec  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _client.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{url} did not come up")


def llama_server_load(binary: Path, model: Path, num_ctx: int) -> float:
    """Spawn → /health 200, with the flags llamagate uses, the port given instead of read back."""
    spec = LaunchSpec(binary=binary, model_path=model, num_ctx=num_ctx, threads=1, parallel=1)
    args = spec.args()
    port = _port()
    args[args.index("--port") + 1] = str(port)
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=binary.parent)
    try:
        _wait(f"http://127.0.0.1:{port}/health")
        return time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait()


# One client for every request: creating one costs ~0.1 s (its SSL context), which would count.
_client = httpx.Client(timeout=120)


_prompts = itertools.count()


def first_token(url: str, model: str) -> float:
    """Request → first token; each prompt differs, so none is answered from the prompt cache.
    An explicit keep_alive: an unload's 0 must not stick to the next load."""
    prompt = f"Say hello to visitor number {next(_prompts)}."
    body = {"model": model, "prompt": prompt, "options": {"num_predict": 1}, "keep_alive": "5m"}
    started = time.monotonic()
    with _client.stream("POST", f"{url}/api/generate", json=body) as r:
        for line in r.iter_lines():
            if json.loads(line).get("response") is not None:
                return time.monotonic() - started
    raise RuntimeError("no token")


class Gate:
    def __init__(self, folder: Path, models: dict[str, Path], env: dict[str, str]) -> None:
        port = _port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(folder / "models"),
                    "LLAMAGATE_THREADS": "1", **env}
        cmd = [sys.executable, "-c", "from proxy.cli.main import main; main()"]
        self.log = folder / "serve.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([*cmd, "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        _wait(self.url)
        for name, path in models.items():
            (folder / "Modelfile").write_text(f"FROM {path}\n")
            subprocess.run([*cmd, "create", name, "-f", str(folder / "Modelfile")], env=self.env, check=True,
                           capture_output=True)

    def unload(self, model: str) -> None:
        _client.post(f"{self.url}/api/generate", json={"model": model, "keep_alive": 0})
        time.sleep(0.3)

    def starts(self, model: str) -> list[float]:
        """Spawn → ready of each runner start, as llamagate logged it."""
        return [float(t) for t in re.findall(rf"\[{model}:latest\] ready on port \d+ in ([\d.]+)s", self.log.read_text())]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    binary = find_llama_server("", Path(tempfile.gettempdir()) / "no-runtime").path
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = {"tiny": write_tiny_model(folder / "tiny.gguf"), "smollm2": default_model.fetch()}
        ctx = {"tiny": 512, "smollm2": 4096}
        own = {m: statistics.median(llama_server_load(binary, p, ctx[m]) for _ in range(runs)) for m, p in models.items()}
        (folder / "cold").mkdir()
        gate = Gate(folder / "cold", models, {})
        cold, warm, start = {}, {}, {}
        try:
            for m in models:
                samples = []
                for _ in range(runs):
                    gate.unload(m)
                    samples.append(first_token(gate.url, m))
                cold[m] = statistics.median(samples)
                warm[m] = statistics.median(first_token(gate.url, m) for _ in range(runs))
                start[m] = statistics.median(gate.starts(m))
        finally:
            gate.close()
        (folder / "swap").mkdir()
        gate = Gate(folder / "swap", models, {"OLLAMA_MAX_LOADED_MODELS": "1"})
        swap: dict[str, list[float]] = {m: [] for m in models}
        try:
            first_token(gate.url, "tiny")
            for _ in range(runs):
                for m in ("smollm2", "tiny"):
                    swap[m].append(first_token(gate.url, m))
        finally:
            gate.close()
    print("| Model | llama-server load (spawn → /health 200) | llamagate runner start (same, from its log) "
          "| cold start (request → first token) | swap (other model loaded, max 1) | first token, loaded |")
    print("| --- | --- | --- | --- | --- | --- |")
    for m in models:
        print(f"| {m} | {own[m]:.2f} s | {start[m]:.2f} s | {cold[m]:.2f} s | {statistics.median(swap[m]):.2f} s | "
              f"{warm[m] * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
