"""What a front llamagate adds in front of other llamagates (README, Many machines): two back
ends on one store serving SmolLM2, a front whose --upstream names both, and the same streamed
/api/chat sent to a back end directly and through the front, alternating, in one run.

    python contrib/bench/front.py [RUNS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from rig import Server, default_model, httpx


def _stream(client: httpx.Client, url: str, body: dict) -> tuple[float, float]:
    """(first token, whole answer) seconds of a streamed /api/chat."""
    start = time.perf_counter()
    first = 0.0
    with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for _ in r.iter_lines():
            first = first or time.perf_counter() - start
    return first, time.perf_counter() - start


def main(runs: int) -> None:
    gguf = default_model.fetch()
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("b0", "b1", "front"):
            (Path(tmp) / part).mkdir()
        backs = [Server(Path(tmp) / "b0")]
        servers = list(backs)
        try:
            backs[0].create("smollm2", gguf)
            backs.append(Server(Path(tmp) / "b1", env={"OLLAMA_MODELS": str(backs[0].models)}))
            servers.append(backs[1])
            front = Server(Path(tmp) / "front", "--upstream", "smollm2=" + ",".join(b.url for b in backs))
            servers.append(front)
            prompt = [{"role": "user", "content": "Write a short poem about the sea."}]
            paths = {"back end direct": [f"{b.url}/api/chat" for b in backs],
                     "through the front": [f"{front.url}/api/chat"] * 2}
            with httpx.Client(timeout=120) as client:
                for tokens in (64, 1):
                    options = {"temperature": 0, "num_predict": tokens}
                    body = {"model": "smollm2", "messages": prompt, "options": options}
                    for b in backs:
                        _stream(client, f"{b.url}/api/chat", body)  # each back end's runner loaded
                    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
                    for i in range(runs if tokens > 1 else 3 * runs):
                        for name, urls in paths.items():
                            times[name].append(_stream(client, urls[i % 2], body))
                    for name, pairs in times.items():
                        first = statistics.median(p[0] for p in pairs) * 1000
                        whole = statistics.median(p[1] for p in pairs) * 1000
                        print(f"{tokens:>2} token(s)  {name:<18} first token {first:7.1f} ms  whole {whole:7.1f} ms")
        finally:
            for srv in servers:
                srv.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
