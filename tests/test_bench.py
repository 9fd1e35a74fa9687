"""The benchmarks in their quick forms: contrib/bench/run.py end to end against real servers,
writing its JSON and charts, and contrib/bench/cpu.py with a few requests a route, so that
README's figures can always be measured again. Their figures are not checked: a few iterations
on a shared machine say nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_benchmark_runs_and_writes_its_results(tmp_path: Path, llama_server_binary: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "contrib" / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["real_model"]["latency"]) == {
        "/api/chat", "/api/generate", "/api/embed (1 input)", "/api/embed (16 inputs)", "/v1/chat/completions"}
    assert results["concurrency"]["/api/chat"]["8"]["errors"] == 0
    assert results["per_chunk"]["/api/chat"]["through_chunks_s"] > 0
    assert results["footprint"]["idle_rss_mb"] > 0 and results["loads"]["cold_start_ms"] > 0
    for name in ("added_latency.png", "concurrency_chunks.png", "concurrency_gap.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert "| /api/chat, 1 token" in run.stdout


def test_the_cpu_per_request_measure_runs(llama_server_binary: Path) -> None:
    """contrib/bench/cpu.py with a few requests a route: every route answers and a figure is printed."""
    run = subprocess.run([sys.executable, str(ROOT / "contrib" / "bench" / "cpu.py"), "5"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    for name in ("/api/chat ", "/v1/chat/completions ", "/api/chat, streamed ", "synthetic upstream alone "):
        assert any(line.startswith(name) and " ms a request" in line for line in lines), run.stdout
