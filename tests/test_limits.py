"""What one request may send and how long a connection may idle, on a real `llamagate serve`
(in front of tests/fake_llama_server.py): body sizes per family of routes (413 in the dialect's
shape), header size (431), the connection cap (uvicorn's 503) and the keep-alive timeout, which
never cuts a long generation."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from conftest import Server, fake_upstream_server, wait_until

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def limited(tmp_path_factory, tiny_gguf: Path):
    srv = fake_upstream_server(tmp_path_factory.mktemp("limits"), env={"LLAMAGATE_KEEPALIVE_TIMEOUT": "1s"})
    try:
        srv.create("tiny", tiny_gguf)
        yield srv
    finally:
        srv.stop()


def _raw(srv: Server, head: str) -> tuple[int, bytes]:
    """A request's head alone, announcing a body it never sends: the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(head.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                top, _, body = data.partition(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in top.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                if len(body) >= length:
                    return int(top.split()[1]), body[:length]
    raise AssertionError(f"no whole answer: {data!r}")


def _announce(srv: Server, path: str, size: int) -> tuple[int, dict]:
    status, body = _raw(srv, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {size}\r\n\r\n")
    return status, json.loads(body)


def test_inference_body_limit_per_dialect(limited: Server) -> None:
    status, body = _announce(limited, "/api/chat", 101 * MiB)
    assert status == 413 and isinstance(body["error"], str)
    status, body = _announce(limited, "/v1/chat/completions", 101 * MiB)
    assert status == 413 and body["error"]["type"] == "invalid_request_error"
    status, body = _announce(limited, "/v1/messages", 101 * MiB)
    assert status == 413 and body == {"type": "error", "error": {"type": "request_too_large",
                                                                 "message": "Request Entity Too Large"}}
    # 2 MiB is nothing for an inference route: it gets as far as the model's name.
    big = {"model": "absent", "messages": [{"role": "user", "content": "x" * 2 * MiB}]}
    assert httpx.post(f"{limited.url}/api/chat", json=big, timeout=60).status_code == 404


def test_metadata_body_limit(limited: Server) -> None:
    r = httpx.post(f"{limited.url}/api/show", json={"model": "tiny", "system": "x" * 2 * MiB}, timeout=60)
    assert r.status_code == 413 and r.json() == {"error": "Request Entity Too Large"}
    status, _ = _announce(limited, "/api/create", 2 * MiB)
    assert status == 413
    assert httpx.post(f"{limited.url}/api/show", json={"model": "tiny", "system": "x" * 1000}).status_code == 200


def test_blob_upload_has_no_limit(limited: Server) -> None:
    data = b"\1" * 3 * MiB
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{limited.url}/api/blobs/{digest}", content=data, timeout=60).status_code == 201


def test_huge_headers_are_431(limited: Server) -> None:
    r = httpx.get(f"{limited.url}/api/tags", headers={"X-Padding": "a" * 70_000})
    assert r.status_code == 431 and "64 KiB" in r.json()["error"]
    r = httpx.get(f"{limited.url}/v1/models", headers={"X-Padding": "a" * 70_000})
    assert r.status_code == 431 and "64 KiB" in r.json()["error"]["message"]
    assert httpx.get(f"{limited.url}/api/tags", headers={"X-Padding": "a" * 30_000}).status_code == 200


def test_idle_connection_is_closed_after_the_keepalive_timeout(limited: Server) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as s:
        s.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while b'"version"' not in answer:
            answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert s.recv(65536) == b""  # closed by the server
        assert time.monotonic() - started < 5


def test_long_generation_outlives_the_keepalive_timeout(limited: Server) -> None:
    """Each of the fake's pauses is longer than the 1 s keep-alive timeout, and the whole answer
    takes about 5 s, streamed or not: the timeout counts only between requests."""
    messages = [{"role": "user", "content": "SLOW:1.25"}]
    started = time.monotonic()
    r = httpx.post(f"{limited.url}/api/chat", json={"model": "tiny", "messages": messages, "stream": False}, timeout=60)
    assert r.status_code == 200 and r.json()["message"]["content"] == "Hi there"
    assert time.monotonic() - started > 4
    started = time.monotonic()
    with httpx.stream("POST", f"{limited.url}/api/chat", json={"model": "tiny", "messages": messages},
                      timeout=60) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert time.monotonic() - started > 4
    assert "".join(line["message"]["content"] for line in lines) == "Hi there" and lines[-1]["done"]


def test_connection_cap(tmp_path: Path) -> None:
    srv = Server(tmp_path, env={"LLAMAGATE_MAX_CONNECTIONS": "3"})
    idle = []
    try:
        for _ in range(2):
            idle.append(socket.create_connection(("127.0.0.1", srv.port)))
        assert httpx.get(f"{srv.url}/api/version").status_code == 200  # the third
        idle.append(socket.create_connection(("127.0.0.1", srv.port)))
        r = httpx.get(f"{srv.url}/api/version")  # the fourth
        assert r.status_code == 503
        assert "concurrency limit" in srv.log()
        for s in idle:
            s.close()
        assert wait_until(lambda: httpx.get(f"{srv.url}/api/version").status_code == 200)
    finally:
        for s in idle:
            s.close()
        srv.stop()
