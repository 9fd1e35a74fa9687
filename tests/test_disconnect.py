"""Clients that leave before their answer starts: a non-streamed generation stops upstream and
frees its slot, on /api and /v1 alike; so does a stream still reading its prompt; a request
queued for room leaves the queue; a load nobody waits for any more is abandoned, its process
stopped."""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import Server, loader_pids, wait_until
from conftest import slot_busy as _processing

from proxy.disconnect import INFERENCE
from proxy.ollama.routes import ROUTES as OLLAMA_ROUTES
from proxy.openai.routes import ROUTES as OPENAI_ROUTES

# A raw continuation rarely meets an end-of-text token: a generation runs to num_predict.
STORY = "Once upon a time, in a land far away, there lived a dragon and a knight. Every day,"
LONG = 4000  # tokens: minutes at one thread, were the generation left running


@pytest.fixture(scope="module")
def srv(tmp_path_factory, smollm2, tiny_gguf, llama_server_binary) -> Iterator[Server]:
    """One slot, one model loaded at a time, one queue place."""
    srv = Server(tmp_path_factory.mktemp("disconnect"),
                 env={"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_MAX_QUEUE": "1"})
    srv.create("smollm2", smollm2)
    srv.create("tiny", tiny_gguf)
    yield srv
    srv.stop()


def _load(srv: Server, model: str = "smollm2") -> None:
    r = httpx.post(f"{srv.url}/api/generate", json={"model": model}, timeout=120)
    assert r.status_code == 200, r.text


def _quick(srv: Server, model: str = "smollm2", timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{srv.url}/api/generate", json={"model": model, "prompt": "hi", "stream": False,
                                                        "options": {"num_predict": 2}}, timeout=timeout)


def _leaves_while_generating(srv: Server, send) -> None:
    """`send` makes a long non-streamed request and gives up after a second; meanwhile the slot
    is seen generating; once it gave up, the slot is free within a second or two."""
    _load(srv)
    seen: list[bool] = []
    # Polled gently: /slots is answered by llama-server's one busy thread.
    watcher = threading.Thread(target=lambda: seen.append(wait_until(lambda: _processing(srv), timeout=3, interval=0.3)))
    watcher.start()
    send()
    watcher.join()
    gave_up = time.monotonic()
    assert seen == [True], "the abandoned generation never started"
    assert wait_until(lambda: not _processing(srv), timeout=5, interval=0.3), srv.log()[-6000:]
    assert time.monotonic() - gave_up < 3
    started = time.monotonic()
    assert _quick(srv).status_code == 200
    assert time.monotonic() - started < 5


def test_abandoned_non_streamed_chat_frees_the_slot(srv):
    def send() -> None:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{srv.url}/api/chat", timeout=httpx.Timeout(10, read=1), json={
                "model": "smollm2", "stream": False, "options": {"num_predict": LONG},
                "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]})
        gc.collect()  # the timed-out response holds its socket until collected

    _leaves_while_generating(srv, send)


def test_abandoned_non_streamed_openai_chat_and_its_retries_free_the_slot(srv):
    """The OpenAI SDK's timeout and its two retries: three abandoned requests in a row. The SDK
    closes the connections of the attempts it retries; the last one's socket belongs to the
    response inside the exception it raises, and closes when that is collected (at once in a
    program that handles the error; `pytest.raises` keeps it in a reference cycle)."""
    def send() -> None:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", timeout=1, max_retries=2)
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="smollm2", max_tokens=LONG, messages=[
                {"role": "user", "content": "Write a very long story about a dragon."}])
        gc.collect()

    _leaves_while_generating(srv, send)


def test_a_queued_request_whose_client_leaves_gives_up_its_queue_place(srv):
    _load(srv)
    with ThreadPoolExecutor(2) as pool:
        busy_started = threading.Event()

        def busy() -> httpx.Response:
            with httpx.stream("POST", f"{srv.url}/api/generate", timeout=120, json={
                    "model": "smollm2", "prompt": STORY, "raw": True, "options": {"num_predict": 150}}) as r:
                for _ in r.iter_lines():
                    busy_started.set()
            return r

        stream = pool.submit(busy)
        assert busy_started.wait(60)
        # tiny needs smollm2's place: it waits for the stream to end, in the one queue place.
        waits = srv.log().count("waiting for a busy model")
        with pytest.raises(httpx.ReadTimeout):
            _quick(srv, "tiny", timeout=1)
        gc.collect()  # the timed-out response holds its socket until collected
        assert srv.log().count("waiting for a busy model") > waits
        # The place is free again: this one is queued (not refused with a 503) and served.
        assert _quick(srv, "tiny").status_code == 200
        assert stream.result().status_code == 200
    assert srv.log().count("[tiny:latest] load abandoned") == 1


def test_a_load_abandoned_by_its_only_client_stops_the_process(loading):
    with pytest.raises(httpx.ReadTimeout):
        _quick(loading, "tiny", timeout=1)
    gc.collect()  # the timed-out response holds its socket until collected
    assert wait_until(lambda: loader_pids(loading) == [], timeout=5), loading.log()[-4000:]
    assert "load abandoned" in loading.log() and "[tiny:latest] stopping" in loading.log(), loading.log()[-4000:]


def test_a_load_another_client_still_waits_for_goes_on(loading):
    with ThreadPoolExecutor(1) as pool:
        staying = pool.submit(lambda: _quick(loading, "tiny", timeout=4))
        with pytest.raises(httpx.ReadTimeout):
            _quick(loading, "tiny", timeout=1)
        gc.collect()  # the timed-out response holds its socket until collected
        time.sleep(1)
        assert len(loader_pids(loading)) == 1 and "load abandoned" not in loading.log()
        with pytest.raises(httpx.ReadTimeout):
            staying.result()
        gc.collect()  # the timed-out response holds its socket until collected
    assert wait_until(lambda: loader_pids(loading) == [], timeout=5)


def test_every_watched_path_is_a_route():
    """A renamed route would silently lose its watch."""
    assert INFERENCE <= {path for handler in [*OLLAMA_ROUTES, *OPENAI_ROUTES] for path in handler.paths}


# A prompt read in batches of 16 tokens: the cancel of a client that left is seen between two.
PROMPT = " ".join(f"Line {i}: the knight rode past the dragon's tower and counted the stones." for i in range(120))


def test_a_client_that_leaves_during_prompt_processing_frees_the_slot(srv):
    """Streamed, on /v1 (the other stages are tested on /api above; both dialects share the watch).
    /slots is polled every 0.1 s, which keeps llama-server's result queue as busy as other streams
    would: its once-a-second check of the connection never runs then, only the prompt progress the
    hop asks for shows it the connection is gone."""
    path = "/v1/completions"
    body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": LONG, "stream": True, "options": {"num_batch": 16}}
    _quick_batch = {"model": "smollm2", "prompt": "hi", "stream": False, "options": {"num_predict": 1, "num_batch": 16}}
    assert httpx.post(f"{srv.url}/api/generate", json=_quick_batch, timeout=120).status_code == 200  # loaded so
    with pytest.raises(httpx.ReadTimeout):  # no first token within the second: still reading the prompt
        with httpx.stream("POST", f"{srv.url}{path}", json=body, timeout=httpx.Timeout(10, read=1.5)) as r:
            r.read()
    assert _processing(srv)
    gc.collect()  # the timed-out response holds its socket until collected
    left = time.monotonic()
    assert wait_until(lambda: not _processing(srv), timeout=10, interval=0.1), srv.log()[-4000:]
    freed = time.monotonic() - left
    assert freed < 1.5, f"{freed:.2f}s"
    assert httpx.post(f"{srv.url}/api/generate", json=_quick_batch, timeout=30).status_code == 200


def test_prompt_progress_never_reaches_a_client(srv):
    """The hop's progress chunks (one per 16-token batch here) are dropped, in both dialects."""
    prompt = PROMPT[:2000]
    options = {"num_predict": 3, "num_batch": 16}
    with httpx.stream("POST", f"{srv.url}/api/generate", timeout=120,
                      json={"model": "smollm2", "prompt": prompt, "raw": True, "options": options}) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] and lines[-1]["prompt_eval_count"] > 200
    assert all(line["response"] for line in lines[:-1]) and 1 <= len(lines) - 1 <= 3, lines
    with httpx.stream("POST", f"{srv.url}/v1/completions", timeout=120, json={
            "model": "smollm2", "prompt": prompt, "max_tokens": 3, "stream": True, "options": options}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("prompt_progress" not in c for c in chunks)
    assert all(c["choices"][0]["text"] or c["choices"][0]["finish_reason"] for c in chunks), chunks
