"""Ollama's defence against DNS rebinding: a server bound to loopback serves only requests whose
Host names this machine or a local network, so a web page can't reach it under its own domain."""

from __future__ import annotations

import functools
import ipaddress
import socket
from pathlib import Path

from litestar.types import ASGIApp, Receive, Scope, Send

from proxy.cors import header

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Go's netip.Addr.IsPrivate (RFC 1918 and RFC 4193), narrower than Python's is_private.
_PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def binds_loopback(host: str) -> bool:
    """Whether the listen address is a loopback one; a name counts as what it resolves to, and
    one that doesn't resolve as loopback (uvicorn will fail to bind it anyway)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0]).is_loopback
    except (OSError, ValueError):
        return True


def _host_name(value: str) -> str:
    """A Host header's host without its port, as Go's net.SplitHostPort splits it; a bracketed
    IPv6 address without a port loses its brackets too (Ollama refuses `[::1]` as a name)."""
    if value.startswith("["):
        return value[1:].partition("]")[0]
    name, sep, _ = value.rpartition(":")
    return name if sep and ":" not in name else value


def _local_addresses() -> set[Address]:
    """This machine's own addresses, as Ollama's isLocalIP asks each interface: read from Linux's
    /proc (every local IPv4 address of the routing table, every IPv6 one); elsewhere none."""
    found: set[Address] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        found |= {ipaddress.ip_address(prev.split()[-1]) for prev, line in zip(lines, lines[1:])
                  if "/32 host LOCAL" in line}
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            found.add(ipaddress.IPv6Address(bytes.fromhex(line.split()[0])))
    except (OSError, ValueError):
        pass
    return found


@functools.lru_cache(maxsize=256)
def _address(host: str) -> Address | None:
    """The Host header's address, if it is one: parsed once per value, not per request (parsing
    it was 2 % of a request's CPU)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped  # Go's IsLoopback and IsPrivate look through ::ffff:a.b.c.d too
    return addr


def _local_ip(host: str) -> bool:
    if (addr := _address(host)) is None:
        return False
    return (addr.is_loopback or addr.is_unspecified or any(addr in net for net in _PRIVATE)
            or addr in _local_addresses())


def _local_name(host: str) -> bool:
    host = host.lower()
    return host in ("", "localhost", socket.gethostname().lower()) or host.endswith(_LOCAL_SUFFIXES)


def host_check_layer(app: ASGIApp, bind_host: str) -> ASGIApp:
    """The ASGI layer, as Ollama's allowedHostsMiddleware (server/routes.go:1803-1839, with
    allowedHost at :1776 and isLocalIP at :1755, at commit fb30760): bound to a non-loopback
    address, nothing is checked; else a Host that is a loopback, private, unspecified or local
    IP passes, one that is localhost, the hostname or *.localhost/.local/.internal passes (an
    OPTIONS to it is answered 204 there), and any other gets an empty 403."""
    if not binds_loopback(bind_host):
        return app

    async def layer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        host = _host_name(header(scope, b"host"))
        if _local_ip(host):
            await app(scope, receive, send)
            return
        if not _local_name(host):
            status = 403
        elif scope["method"] == "OPTIONS":
            status = 204
        else:
            await app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    return layer
