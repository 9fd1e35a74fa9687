"""Faults of the engine, on every inference route, streamed or not: a llama-server that answers
500, sends bytes that are no JSON, is killed mid-answer, or hangs (tests/fake_llama_server.py's
`FAULT:` requests). The client gets an error in its dialect's shape within a second (a hang
within the hang watchdog's timeout), never a traceback in the log, and the next request works."""

from __future__ import annotations

import json
import time
import httpx
import pytest
from conftest import FAKE_HANG_TIMEOUT as HANG_TIMEOUT
from conftest import Server

@pytest.fixture
def fake(fake_server) -> Server:
    return fake_server


def _body(path: str, text: str, stream: bool) -> dict:
    if path in ("/api/chat", "/v1/chat/completions"):
        return {"model": "tiny", "stream": stream, "messages": [{"role": "user", "content": text}]}
    if path == "/api/embed":
        return {"model": "tiny", "input": text}
    return {"model": "tiny", "stream": stream, "prompt": text}


ROUTES = [("/api/chat", True), ("/api/chat", False), ("/api/generate", True), ("/api/generate", False),
          ("/v1/chat/completions", True), ("/v1/chat/completions", False), ("/v1/completions", True),
          ("/v1/completions", False), ("/api/embed", False)]


def _errors(path: str, r: httpx.Response) -> list[str]:
    """The error messages of an answer, in the dialect's shape: a status of its own before the
    answer started, or the stream's last line or event after."""
    v1 = path.startswith("/v1/")
    if r.status_code != 200:
        assert r.status_code >= 500 and r.headers["content-type"].startswith("application/json"), r.text
        error = r.json()["error"]
        return [error["message"] if v1 else error]
    if v1:
        # OpenAI's clients raise on an error event; the [DONE] after it ends the stream cleanly.
        *events, done = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert done == "[DONE]", r.text
        return [json.loads(events[-1])["error"]["message"]]
    lines = [json.loads(line) for line in r.text.splitlines() if line]
    assert not lines[-1].get("done"), r.text
    return [lines[-1]["error"]]


def _healthy(fake: Server, path: str, stream: bool) -> None:
    started = time.monotonic()
    r = httpx.post(f"{fake.url}{path}", json=_body(path, "ECHO:fine", stream), timeout=30)
    assert r.status_code == 200 and '"error"' not in r.text, r.text
    if stream:
        assert r.text.rstrip().endswith("data: [DONE]" if path.startswith("/v1/") else '}'), r.text
        assert '"done":true' in r.text or path.startswith("/v1/"), r.text
    assert time.monotonic() - started < 5


# A death costs a restart (about a second here): a stream and one JSON answer, one per dialect
# (500s and garbage above cover each route's own reading of the answer).
CASES = [(path, stream, fault) for path, stream in ROUTES for fault in ("500", "garbage")] + [
    ("/api/chat", True, "die"), ("/v1/completions", False, "die")]


@pytest.mark.parametrize(("path", "stream", "fault"), CASES)
def test_an_engine_fault_is_an_error_at_once_and_the_next_request_works(fake, path, stream, fault) -> None:
    _healthy(fake, path, stream)  # loaded: the time below is the fault's alone
    before = fake.log()
    started = time.monotonic()
    r = httpx.post(f"{fake.url}{path}", json=_body(path, f"FAULT:{fault}", stream), timeout=30)
    took = time.monotonic() - started
    (message,) = _errors(path, r)
    assert message and "internal server error" not in message, message
    if fault == "die":
        assert "exited unexpectedly" in message, message
    assert took < 1, f"{took:.2f}s"
    _healthy(fake, path, stream)
    assert "Traceback" not in fake.log()[len(before):], fake.log()[len(before):]


# tests/test_runners.py has a real llama-server hang in a streamed /api/generate.
@pytest.mark.parametrize(("path", "stream"), [("/v1/chat/completions", False)])
def test_a_hung_engine_is_an_error_after_the_hang_timeout(fake, path, stream) -> None:
    _healthy(fake, path, stream)
    started = time.monotonic()
    r = httpx.post(f"{fake.url}{path}", json=_body(path, "FAULT:hang", stream), timeout=30)
    took = time.monotonic() - started
    (message,) = _errors(path, r)
    assert f"stopped responding for {HANG_TIMEOUT}s" in message, message
    # The watchdog asks /slots every hang_timeout/2 and waits hang_timeout for an answer.
    assert took < HANG_TIMEOUT * 1.5 + 1, f"{took:.2f}s"
    _healthy(fake, path, stream)
