"""The Host check (Ollama's allowedHostsMiddleware): a real `llamagate serve` bound to loopback
refuses a Host that names no local machine (DNS rebinding) and serves every local one; bound to
all addresses it checks nothing."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from conftest import Server

from proxy.hosts import binds_loopback


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("hosts"))
    yield srv
    srv.stop()


@pytest.mark.parametrize(("host", "loop"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
])
def test_binds_loopback(host: str, loop: bool) -> None:
    assert binds_loopback(host) is loop


def _get(srv: Server, host: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{srv.url}/api/version", headers={"Host": host, **headers})


@pytest.mark.parametrize("host", [
    "evil.example", "evil.example:{port}", "localhost.evil.example", "8.8.8.8", "[2001:4860:4860::8888]:{port}",
    "local", "example.localhostx",
])
def test_foreign_host_is_refused(loopback: Server, host: str) -> None:
    r = _get(loopback, host.format(port=loopback.port))
    assert r.status_code == 403 and r.content == b""


def test_rebinding_page_is_refused(loopback: Server) -> None:
    """A page at evil.example that rebinds the name to 127.0.0.1 calls us same-origin: CORS lets
    it pass, the Host check doesn't."""
    r = _get(loopback, f"evil.example:{loopback.port}", Origin=f"http://evil.example:{loopback.port}")
    assert r.status_code == 403


@pytest.mark.parametrize("host", [
    "localhost", "localhost:{port}", "LOCALHOST:{port}", "127.0.0.1:{port}", "127.0.0.1", "[::1]:{port}", "[::1]",
    "foo.localhost", "foo.localhost:{port}", "printer.local", "box.internal:{port}", "10.1.2.3", "172.16.0.9:{port}",
    "192.168.1.5:{port}", "[fd00::1]:{port}", "0.0.0.0:{port}", "[::ffff:127.0.0.1]:{port}", "",
])
def test_local_host_is_served(loopback: Server, host: str) -> None:
    r = _get(loopback, host.format(port=loopback.port))
    assert r.status_code == 200, host


def test_own_hostname_is_served(loopback: Server) -> None:
    assert _get(loopback, f"{socket.gethostname()}:{loopback.port}").status_code == 200


def test_options_to_a_local_name_is_204(loopback: Server) -> None:
    r = httpx.options(f"{loopback.url}/api/tags", headers={"Host": f"localhost:{loopback.port}"})
    assert r.status_code == 204 and r.content == b""
    r = httpx.options(f"{loopback.url}/api/tags", headers={"Host": "evil.example"})
    assert r.status_code == 403


def test_no_check_when_bound_to_every_address(tmp_path: Path) -> None:
    srv = Server(tmp_path, bind="0.0.0.0")
    try:
        assert _get(srv, "evil.example").status_code == 200
        assert _get(srv, f"evil.example:{srv.port}").status_code == 200
    finally:
        srv.stop()
