"""CORS as Ollama answers it: which origins are allowed (a table), and what a real `llamagate
serve` sends a browser's preflight, its actual request and a refused origin, in both dialects."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, llamagate_cmd

from proxy.cors import ALLOW_HEADERS, ALLOW_METHODS, Origins
from supervisor.config import parse_origins

ORIGINS = [
    # Ollama's defaults: localhost, 127.0.0.1 and 0.0.0.0, any port, http and https; app shells.
    ("", "http://localhost", True),
    ("", "http://localhost:3000", True),
    ("", "https://localhost:8443", True),
    ("", "http://127.0.0.1:8080", True),
    ("", "https://127.0.0.1", True),
    ("", "http://0.0.0.0:5173", True),
    ("", "app://obsidian.md", True),
    ("", "file://", True),
    ("", "tauri://localhost", True),
    ("", "vscode-webview://1abc", True),
    ("", "vscode-file://vscode-app", True),
    # A pattern is a prefix and a suffix: Ollama admits this too.
    ("", "http://localhost:3000.example.com", True),
    # Not by default: other hosts, other schemes, browser extensions, a host that only starts alike.
    ("", "http://example.com", False),
    ("", "https://localhost.example.com", False),
    ("", "http://192.168.1.5:3000", False),
    ("", "chrome-extension://abcdef", False),
    ("", "moz-extension://abcdef", False),
    ("", "null", False),
    ("", "ws://localhost:3000", False),
    # OLLAMA_ORIGINS adds to the defaults: exact names (compared lowercased and trimmed) ...
    ("https://chat.example.com", "https://chat.example.com", True),
    ("https://chat.example.com", "https://chat.example.com:8443", False),
    ("https://Chat.Example.com ", "https://chat.example.com", True),
    ("https://a.example,https://b.example", "https://b.example", True),
    ("chrome-extension://abcdef", "chrome-extension://abcdef", True),
    ("chrome-extension://abcdef", "chrome-extension://other", False),
    # ... and one-* patterns: a suffix, a prefix, or both.
    ("*.example.com", "https://chat.example.com", True),
    ("*.example.com", "https://example.org", False),
    ("chrome-extension://*", "chrome-extension://abcdef", True),
    ("moz-extension://*", "chrome-extension://abcdef", False),
    ("https://*.example.com", "https://chat.example.com", True),
    ("https://*.example.com", "http://chat.example.com", False),
    ("http://192.168.1.*", "http://192.168.1.5:3000", True),
    # `*` alone is every origin.
    ("*", "https://anything.example", True),
    ("*", "chrome-extension://abcdef", True),
]


@pytest.mark.parametrize(("setting", "origin", "allowed"), ORIGINS)
def test_allowed_origins(setting: str, origin: str, allowed: bool) -> None:
    assert Origins.compile(parse_origins(setting)).allow(origin) is allowed


@pytest.mark.parametrize(("setting", "message"), [
    ("example.com", "must contain '*' or begin with http://"),
    ("https://a.example,", "'': an origin must contain"),  # a trailing comma is an empty entry
    (" https://a.example", "must contain"),  # Ollama checks the scheme before trimming
    ("HTTPS://a.example", "must contain"),
    ("https://*.example.*", "only one * is allowed"),
])
def test_bad_origins_setting_is_refused(setting: str, message: str) -> None:
    with pytest.raises(ValueError, match="OLLAMA_ORIGINS") as e:
        parse_origins(setting)
    assert message in str(e.value)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("cors"), env={"OLLAMA_ORIGINS": "https://chat.example.com,chrome-extension://*"})
    try:
        yield srv
    finally:
        srv.stop()


def _preflight(srv: Server, path: str, origin: str, method: str = "POST") -> httpx.Response:
    return httpx.options(srv.url + path, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type,authorization,x-stainless-os",
    })


@pytest.mark.parametrize("path", ["/api/chat", "/api/tags", "/v1/chat/completions", "/v1/models", "/api/nothing-here"])
@pytest.mark.parametrize("origin", ["http://localhost:3000", "https://chat.example.com", "chrome-extension://abc"])
def test_preflight_from_an_allowed_origin(served: Server, path: str, origin: str) -> None:
    r = _preflight(served, path, origin)
    assert r.status_code == 204 and r.content == b""
    assert r.headers["access-control-allow-origin"] == origin
    assert r.headers["access-control-allow-methods"] == ALLOW_METHODS
    assert r.headers["access-control-allow-headers"] == ALLOW_HEADERS
    assert {"Authorization", "Content-Type", "X-Stainless-Os"} <= set(r.headers["access-control-allow-headers"].split(","))
    assert r.headers["access-control-max-age"] == "43200"
    assert r.headers.get_list("vary") == ["Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"]


@pytest.mark.parametrize("path", ["/api/tags", "/v1/models", "/api/version"])
def test_actual_request_from_an_allowed_origin(served: Server, path: str) -> None:
    r = httpx.get(served.url + path, headers={"Origin": "http://127.0.0.1:5173"})
    assert r.status_code == 200 and r.json()
    assert r.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
    assert r.headers.get_list("vary") == ["Origin"]
    assert "access-control-allow-methods" not in r.headers  # preflight only


def test_error_answers_carry_cors_too(served: Server) -> None:
    """A browser page must be able to read the error: a 404 in each dialect names its origin."""
    for r in (
        httpx.post(served.url + "/api/chat", json={"model": "absent", "messages": []}, headers={"Origin": "http://localhost:3000"}),
        httpx.post(served.url + "/v1/chat/completions", json={"model": "absent", "messages": [{"role": "user", "content": "hi"}]},
                   headers={"Origin": "http://localhost:3000"}),
    ):
        assert r.status_code == 404 and r.json()["error"]
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"


@pytest.mark.parametrize("path", ["/api/chat", "/api/tags", "/v1/chat/completions", "/v1/models"])
def test_other_origins_get_403(served: Server, path: str) -> None:
    for r in (_preflight(served, path, "http://evil.example"),
              httpx.get(served.url + path, headers={"Origin": "http://evil.example"}),
              httpx.post(served.url + path, json={}, headers={"Origin": "moz-extension://abc"})):
        assert r.status_code == 403 and r.content == b""
        assert "access-control-allow-origin" not in r.headers


def test_requests_without_a_foreign_origin_pass_untouched(served: Server) -> None:
    plain = httpx.get(served.url + "/api/tags")
    same = httpx.get(served.url + "/api/tags", headers={"Origin": served.url})  # fetch() from our own address
    for r in (plain, same):
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers and "vary" not in r.headers


def test_every_origin(tmp_path: Path) -> None:
    srv = Server(tmp_path, env={"OLLAMA_ORIGINS": "*"})
    try:
        pre = _preflight(srv, "/api/chat", "https://anything.example")
        get = httpx.get(srv.url + "/api/tags", headers={"Origin": "https://anything.example"})
    finally:
        srv.stop()
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "*" and "vary" not in pre.headers
    assert get.status_code == 200 and get.headers["access-control-allow-origin"] == "*" and "vary" not in get.headers


def test_serve_refuses_a_bad_origins_setting(tmp_path: Path) -> None:
    r = subprocess.run([*llamagate_cmd(), "serve"], capture_output=True, text=True, timeout=60, env={
        **os.environ, "OLLAMA_ORIGINS": "example.com", "OLLAMA_HOST": "127.0.0.1:1", "OLLAMA_MODELS": str(tmp_path)})
    assert r.returncode != 0
    assert "OLLAMA_ORIGINS=\"example.com\" (environment): 'example.com': an origin must contain" in r.stderr
