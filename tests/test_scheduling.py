"""The scheduler with real llama-servers: swaps under OLLAMA_MAX_LOADED_MODELS that wait for
in-flight streams, parallel slots, the queue limit's 503, eviction by memory (shortest remaining
keep_alive first), expiry under load, and restarts for changed load options."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest
from conftest import Server, wait_until
from tinymodel import write_tiny_model

# A raw continuation (no chat template) rarely meets an end-of-text token: streams run to num_predict.
LONG = {"prompt": "Once upon a time, in a land far away, there lived a dragon and a knight. Every day,", "raw": True}


def _stream(server: Server, model: str, num_predict: int, on_line=lambda: None, **body) -> list[tuple[float, dict]]:
    """Every NDJSON line of a streamed generate, with the time it arrived."""
    lines = []
    payload = {"model": model, **LONG, "options": {"num_predict": num_predict}, **body}
    with httpx.stream("POST", f"{server.url}/api/generate", json=payload, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            lines.append((time.monotonic(), json.loads(line)))
            on_line()
    return lines


def _streaming(pool: ThreadPoolExecutor, server: Server) -> Future:
    """A long smollm2 stream in the background, returned once its first line arrived."""
    first_line = threading.Event()
    future = pool.submit(_stream, server, "smollm2", 60, first_line.set)
    assert first_line.wait(60)
    return future


def _generate(server: Server, model: str, **body) -> httpx.Response:
    body.setdefault("options", {"num_predict": 2})
    return httpx.post(f"{server.url}/api/generate", json={"model": model, "prompt": "hi", "stream": False, **body},
                      timeout=120)


def _started(server: Server, model: str) -> int:
    return server.log().count(f"[{model}] starting:")


@pytest.fixture(scope="module")
def tinies(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three distinct tiny models (one runner each: runners are per file)."""
    folder = tmp_path_factory.mktemp("tinies")
    return [write_tiny_model(folder / f"t{i}.gguf", context_length=256 + i) for i in range(3)]


def _server(tmp: Path, smollm2: Path, tinies: list[Path], env: dict[str, str]) -> Server:
    srv = Server(tmp, env=env)
    srv.create("smollm2", smollm2)
    srv.create("tiny", tinies[0])
    srv.create("tiny2", tinies[1])
    return srv


@pytest.fixture(scope="module")
def one_model(tmp_path_factory, smollm2, tinies, llama_server_binary) -> Iterator[Server]:
    """At most one model loaded and one request queued."""
    srv = _server(tmp_path_factory.mktemp("one"), smollm2, tinies,
                  {"OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_MAX_QUEUE": "1"})
    yield srv
    srv.stop()


def test_swap_waits_for_the_stream_in_flight(one_model):
    """A request for another model waits for the running stream to finish, then swaps."""
    with ThreadPoolExecutor(1) as pool:
        stream = _streaming(pool, one_model)
        started = time.monotonic()
        r = _generate(one_model, "tiny")
        answered = time.monotonic()
        lines = stream.result()
    assert r.status_code == 200 and r.json()["done"]
    # The stream was not cut: it ran to its end, and the swap came after it.
    assert lines[-1][1]["done"] is True and lines[-1][1]["done_reason"] == "length"
    assert lines[-1][0] <= answered and answered - started > 0.3
    assert "waiting for a busy model to finish" in one_model.log()
    assert "evicting smollm2:latest" in one_model.log()
    assert len(one_model.runner_pids()) == 1


def test_full_queue_answers_503_with_ollamas_message(one_model):
    with ThreadPoolExecutor(2) as pool:
        stream = _streaming(pool, one_model)
        waits = one_model.log().count("waiting for a busy model")
        queued = pool.submit(_generate, one_model, "tiny")  # waits for smollm2: the one queue place
        assert wait_until(lambda: one_model.log().count("waiting for a busy model") > waits, timeout=30)
        r = _generate(one_model, "tiny")
        assert r.status_code == 503
        assert r.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
        # The same through the ollama client, which raises with the status.
        with pytest.raises(ollama.ResponseError) as e:
            ollama.Client(host=one_model.url).generate(model="tiny", prompt="hi")
        assert e.value.status_code == 503
        assert queued.result().status_code == 200
        assert stream.result()[-1][1]["done"] is True
    # A request for the loaded model is not queued, whatever the queue holds.
    assert _generate(one_model, "tiny").status_code == 200


def test_expiry_and_swaps_racing_requests(tmp_path, smollm2, tinies):
    """keep_alive of 50 ms and two models for one place: expiries, evictions and new requests
    collide all the time, and no request may fail or lose its stream."""
    srv = _server(tmp_path, smollm2, tinies, {"OLLAMA_MAX_LOADED_MODELS": "1"})

    def ask(i: int) -> dict:
        lines = _stream(srv, ("tiny", "tiny2")[i % 2], 20, keep_alive=0.05)
        time.sleep((i % 3) * 0.03)
        return lines[-1][1]

    try:
        with ThreadPoolExecutor(4) as pool:
            ends = list(pool.map(ask, range(24)))
        assert all(end.get("done") is True and "error" not in end for end in ends)
        assert "evicting" in srv.log() and "stopping" in srv.log()
        assert wait_until(lambda: srv.runner_pids() == [], timeout=10)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def two_slots(tmp_path_factory, smollm2, tinies, llama_server_binary) -> Iterator[Server]:
    srv = _server(tmp_path_factory.mktemp("two"), smollm2, tinies, {"OLLAMA_NUM_PARALLEL": "2"})
    yield srv
    srv.stop()


def test_num_parallel_two_streams_at_once(two_slots):
    with ThreadPoolExecutor(2) as pool:
        a, b = (f.result() for f in [pool.submit(_stream, two_slots, "smollm2", 40) for _ in range(2)])
    first_a, last_a = a[0][0], a[-2][0]
    first_b, last_b = b[0][0], b[-2][0]
    # Tokens of both streams interleave: each started before the other ended.
    assert first_a < last_b and first_b < last_a
    assert a[-1][1]["done"] and b[-1][1]["done"]
    assert "--parallel 2" in two_slots.log() and two_slots.log().count("[smollm2:latest] starting:") == 1


def test_expiry_under_load(two_slots):
    """keep_alive shorter than a stream: the runner lives through it, each request renews it,
    and it goes once idle for keep_alive."""
    (pid,) = two_slots.runner_pids()  # smollm2, from the test before
    lines = _stream(two_slots, "smollm2", 100, keep_alive="1s")
    assert lines[-1][1]["done"] is True and lines[-1][0] - lines[0][0] > 1
    for _ in range(3):
        time.sleep(0.5)
        assert _generate(two_slots, "smollm2", keep_alive="1s").status_code == 200
    assert two_slots.runner_pids() == [pid]
    assert wait_until(lambda: two_slots.runner_pids() == [], timeout=10)
    assert _started(two_slots, "smollm2:latest") == 1


def test_load_option_changes_restart_and_others_wait(two_slots):
    before = _started(two_slots, "tiny:latest")
    options = [{"num_ctx": 128}, {"num_ctx": 192}, {"num_ctx": 128, "num_batch": 64}, {"num_ctx": 128, "num_thread": 1}]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda o: _generate(two_slots, "tiny", options={"num_predict": 8, **o}), options * 2))
    # Nobody failed for someone else's options: each waited its turn.
    assert [r.status_code for r in results] == [200] * 8
    log = two_slots.log()
    assert "--ctx-size 384" in log and "--batch-size 64" in log  # 192 × 2 slots
    assert _started(two_slots, "tiny:latest") - before >= 3


@pytest.fixture
def budget_server(tmp_path, tinies, llama_server_binary) -> Iterator[Server]:
    """Room in LLAMAGATE_MAX_MEMORY for a tiny runner about to load (its estimate: the file, its KV
    cache and the flat 256 MiB compute allowance) beside one loaded (its load log's buffers, 1.3 MiB
    on the pinned build), not beside two: a 2 MiB margin."""
    estimate = (256 << 20) + tinies[0].stat().st_size + 256 * 512
    srv = Server(tmp_path, env={"LLAMAGATE_MAX_MEMORY": str(estimate + (2 << 20))})
    try:
        for i, path in enumerate(tinies):
            srv.create(f"t{i}", path)
        yield srv
    finally:
        srv.stop()


def test_memory_eviction_picks_the_shortest_remaining_keep_alive(budget_server):
    assert _generate(budget_server, "t0", keep_alive="10m").status_code == 200
    assert _generate(budget_server, "t1", keep_alive="1m").status_code == 200
    assert len(budget_server.runner_pids()) == 2
    assert _generate(budget_server, "t2").status_code == 200
    log = budget_server.log()
    assert "[t2:latest] needs room (memory): evicting t1:latest" in log
    assert "evicting t0:latest" not in log
    assert wait_until(lambda: len(budget_server.runner_pids()) == 2)


def test_rpc_workers_are_passed_to_that_model_only(tmp_path, tinies, llama_server_binary):
    srv = Server(tmp_path, "--rpc", "t0=127.0.0.1:1,127.0.0.1:2")
    try:
        srv.create("t0", tinies[0])
        srv.create("t1", tinies[1])
        # No worker listens there: t0 is refused before a llama-server starts, naming them
        # (tests/test_rpc.py runs real workers); t1 has none and starts without --rpc.
        r = _generate(srv, "t0")
        assert r.status_code == 503 and "RPC worker unreachable" in r.json()["error"], r.text
        assert "127.0.0.1:1" in r.json()["error"] and "127.0.0.1:2" in r.json()["error"]
        assert _generate(srv, "t1").status_code == 200
        starts = [line for line in srv.log().splitlines() if "starting:" in line]
        assert not any("[t0:latest]" in s for s in starts)
        assert any("[t1:latest]" in s for s in starts) and not any("--rpc" in s for s in starts)
    finally:
        srv.stop()
