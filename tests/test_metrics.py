"""GET /metrics against real `llamagate serve`: requests counted at their end by route template and
status, durations and time to first token, tokens as the answers report them, runner loads and
evictions, the queue, each runner's own llamacpp: metrics; /api/ps showing what waits; the
activity records the status page will read."""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import Server, fake_upstream_server, wait_until
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_disconnect import STORY
from tinymodel import write_tiny_model

from proxy.app import create_app
from supervisor.config import Config


def scrape(srv: Server) -> dict[tuple[str, frozenset], float]:
    """Every sample, keyed by (sample name, its labels); parsed as Prometheus parses it."""
    r = httpx.get(f"{srv.url}/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Iterator[Server]:
    """A server on the fake llama-server with two models (distinct files) and one loaded at a time."""
    tmp = tmp_path_factory.mktemp("metrics")
    srv = fake_upstream_server(tmp, env={"OLLAMA_MAX_LOADED_MODELS": "1"})
    srv.create("fake", write_tiny_model(tmp / "a.gguf"))
    srv.create("other", write_tiny_model(tmp / "b.gguf", context_length=256))
    yield srv
    srv.stop()


_CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
_GEN = {"model": "fake", "prompt": "hi"}


def _ndjson_last(r: httpx.Response) -> dict:
    return json.loads(r.text.strip().splitlines()[-1])


def test_inference_requests_are_counted_by_route_with_their_tokens(fake):
    httpx.post(f"{fake.url}/api/generate", json={"model": "fake"}, timeout=60)  # loaded before counting
    before = scrape(fake)
    answers = [
        _ndjson_last(httpx.post(f"{fake.url}/api/chat", json=_CHAT, timeout=60)),
        httpx.post(f"{fake.url}/api/chat", json={**_CHAT, "stream": False}, timeout=60).json(),
        _ndjson_last(httpx.post(f"{fake.url}/api/generate", json=_GEN, timeout=60)),
        httpx.post(f"{fake.url}/api/generate", json={**_GEN, "stream": False}, timeout=60).json(),
    ]
    v1 = httpx.post(f"{fake.url}/v1/chat/completions", json={**_CHAT, "stream": False}, timeout=60).json()
    httpx.post(f"{fake.url}/v1/chat/completions", json={**_CHAT, "stream": True}, timeout=60)
    after = scrape(fake)

    for route, n in (("/api/chat", 2), ("/api/generate", 2), ("/v1/chat/completions", 2)):
        assert moved(before, after, "llamagate_requests_total", method="POST", route=route, status="200") == n
        assert moved(before, after, "llamagate_request_duration_seconds_count", method="POST", route=route) == n
        # Only the streamed answer of each pair has a first token to time.
        ttft = "llamagate_time_to_first_token_seconds_count"
        assert moved(before, after, ttft, route=route, model="fake:latest") == 1
        assert moved(before, after, "llamagate_time_to_first_token_seconds_bucket", route=route,
                     model="fake:latest", le="+Inf") == 1
    prompt = sum(a["prompt_eval_count"] for a in answers) + 2 * v1["usage"]["prompt_tokens"]
    generated = sum(a["eval_count"] for a in answers) + 2 * v1["usage"]["completion_tokens"]
    assert generated > 0
    assert moved(before, after, "ollama_prompt_eval_total", model="fake:latest") == prompt
    assert moved(before, after, "ollama_eval_total", model="fake:latest") == generated
    # The scrape before this one is counted too, under its route.
    assert moved(before, after, "llamagate_requests_total", method="GET", route="/metrics", status="200") == 1


def test_errors_are_counted_with_their_status_and_no_raw_path(fake):
    before = scrape(fake)
    assert httpx.post(f"{fake.url}/api/chat", json={**_CHAT, "model": "missing"}).status_code == 404
    assert httpx.post(f"{fake.url}/api/chat", json={"messages": []}).status_code == 400
    assert httpx.head(f"{fake.url}/api/blobs/sha256:{'0' * 64}").status_code == 404
    assert httpx.get(f"{fake.url}/no/such/path/123").status_code == 404
    after = scrape(fake)
    assert moved(before, after, "llamagate_requests_total", method="POST", route="/api/chat", status="404") == 1
    assert moved(before, after, "llamagate_requests_total", method="POST", route="/api/chat", status="400") == 1
    assert moved(before, after, "llamagate_requests_total", method="HEAD", route="/api/blobs/{digest}",
                 status="404") == 1
    assert moved(before, after, "llamagate_requests_total", method="GET", route="unmatched", status="404") == 1
    assert not any("123" in dict(labels).get("route", "") for _, labels in after)


def test_gauges_loads_evictions_and_runner_samples(fake):
    httpx.post(f"{fake.url}/api/generate", json={"model": "fake"}, timeout=60)
    before = scrape(fake)
    assert value(before, "ollama_queue_capacity") == 512
    assert value(before, "ollama_requests_queued") == 0
    assert value(before, "ollama_models_loaded") == 1
    # The fake runner's own family, re-exported with its model named; HELP/TYPE once.
    assert value(before, "llamacpp:requests_processing", model="fake:latest", runner="completion") == 0
    text = httpx.get(f"{fake.url}/metrics").text
    assert text.count("# TYPE llamacpp:requests_processing gauge") == 1

    httpx.post(f"{fake.url}/api/generate", json={"model": "other"}, timeout=60)  # evicts fake (one at a time)
    httpx.post(f"{fake.url}/api/generate", json={"model": "fake"}, timeout=60)  # and back
    after = scrape(fake)
    assert moved(before, after, "llamagate_runner_loads_total", model="other:latest") == 1
    assert moved(before, after, "llamagate_runner_loads_total", model="fake:latest") == 1
    assert moved(before, after, "llamagate_runner_evictions_total", model="fake:latest") == 1
    assert moved(before, after, "llamagate_runner_evictions_total", model="other:latest") == 1
    assert moved(before, after, "llamagate_runner_load_duration_seconds_count", model="other:latest") == 1
    assert value(after, "llamagate_runner_crashes_total", model="fake:latest") == 0
    assert value(after, "ollama_models_loaded") == 1


def test_activity_records_one_per_inference_request_with_tokens(tmp_path, monkeypatch):
    """In process (the status page reads them there): the Gateway's ring of finished requests."""
    srv = fake_upstream_server(tmp_path)
    try:
        srv.create("fake", write_tiny_model(tmp_path / "a.gguf"))
    finally:
        srv.stop()
    monkeypatch.setenv("FAKE_LLAMA_LOG", str(tmp_path / "requests.jsonl"))
    app = create_app(Config.load(models_dir=srv.models, llama_server=str(tmp_path / "llama-server")))
    with TestClient(app) as client:
        streamed = _ndjson_last(client.post("/api/chat", json=_CHAT))
        whole = client.post("/v1/chat/completions", json={**_CHAT, "stream": False}).json()
        assert client.post("/api/chat", json={**_CHAT, "model": "missing"}).status_code == 404
        client.get("/api/tags")  # not inference: not recorded
        records = app.state.gate.activity.records()
    assert [(r.route, r.model, r.status) for r in records] == [
        ("/api/chat", "fake:latest", 200), ("/v1/chat/completions", "fake:latest", 200), ("/api/chat", "", 404)]
    chat, v1, _ = records
    assert (chat.prompt_tokens, chat.generated_tokens) == (streamed["prompt_eval_count"], streamed["eval_count"])
    assert (v1.prompt_tokens, v1.generated_tokens) == (whole["usage"]["prompt_tokens"],
                                                      whole["usage"]["completion_tokens"])
    # The fake reports 3 tokens in 2.5 ms.
    assert chat.tokens_per_second == pytest.approx(1200) and chat.seconds > 0


# The real model: its own metrics, tokens, and a request waiting in the queue ---------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory, smollm2, tiny_gguf, llama_server_binary) -> Iterator[Server]:
    """One slot and one model at a time, as tests/test_disconnect.py's queued test has it."""
    srv = Server(tmp_path_factory.mktemp("metrics-real"),
                 env={"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_LOADED_MODELS": "1"})
    srv.create("smollm2", smollm2)
    srv.create("tiny", tiny_gguf)
    yield srv
    srv.stop()


def test_runner_metrics_and_tokens_from_smollm2(real):
    before = scrape(real)
    answer = httpx.post(f"{real.url}/api/generate", timeout=120, json={
        "model": "smollm2", "prompt": "Say hi.", "stream": False, "options": {"num_predict": 5}}).json()
    after = scrape(real)
    assert moved(before, after, "ollama_eval_total", model="smollm2:latest") == answer["eval_count"] > 0
    assert moved(before, after, "ollama_prompt_eval_total", model="smollm2:latest") == answer["prompt_eval_count"]
    # llama-server's own counters, under their llama.cpp names, labelled with the model.
    assert value(after, "llamacpp:tokens_predicted_total", model="smollm2:latest", runner="completion") > 0
    assert ("llamacpp:prompt_tokens_total", frozenset({("model", "smollm2:latest"), ("runner", "completion")})) in after


def test_a_request_waiting_for_a_busy_model_shows_in_ps_and_the_gauge(real):
    httpx.post(f"{real.url}/api/generate", json={"model": "smollm2"}, timeout=120)
    with ThreadPoolExecutor(2) as pool:
        started = threading.Event()

        def busy() -> int:
            with httpx.stream("POST", f"{real.url}/api/generate", timeout=120, json={
                    "model": "smollm2", "prompt": STORY, "raw": True, "options": {"num_predict": 150}}) as r:
                for _ in r.iter_lines():
                    started.set()
            return r.status_code

        stream = pool.submit(busy)
        assert started.wait(60)
        waiting = pool.submit(lambda: httpx.post(f"{real.url}/api/generate", timeout=120, json={
            "model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}).status_code)

        def tiny_entry() -> dict | None:
            models = httpx.get(f"{real.url}/api/ps").json()["models"]
            return next((m for m in models if m["name"] == "tiny:latest"), None)

        assert wait_until(lambda: (tiny_entry() or {}).get("queued") == 1, timeout=30), real.log()[-3000:]
        entry = tiny_entry()
        assert entry["loading"] is True and entry["load_seconds"] >= 0 and entry["loading_since"]
        assert value(scrape(real), "ollama_requests_queued") == 1
        assert "1 queued" in real.cli("ps").stdout
        assert stream.result() == 200 and waiting.result() == 200
    assert value(scrape(real), "ollama_requests_queued") == 0
    assert all(m.get("queued") == 0 for m in httpx.get(f"{real.url}/api/ps").json()["models"])


def test_a_load_in_progress_shows_in_ps(loading):
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: httpx.post(f"{loading.url}/api/generate", json={"model": "tiny", "prompt": "hi"},
                                                 timeout=8))
        assert wait_until(lambda: any(m["loading"] for m in httpx.get(f"{loading.url}/api/ps").json()["models"]))
        time.sleep(1.1)
        (entry,) = httpx.get(f"{loading.url}/api/ps").json()["models"]
        assert entry["name"] == "tiny:latest" and entry["loading"] and entry["load_seconds"] >= 1
        assert "Loading (" in loading.cli("ps").stdout
        assert value(scrape(loading), "ollama_models_loaded") == 0
        with pytest.raises(httpx.ReadTimeout):
            pending.result()
        gc.collect()  # the timed-out response holds its socket until collected
