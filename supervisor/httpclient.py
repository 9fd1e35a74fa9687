"""httpx clients that share one TLS context: building one per client costs 0.1–0.2 s of blocked
event loop, which showed up in every model load (the health poll, the hang probe, the pool)."""

from __future__ import annotations

import ssl
from functools import cache
from typing import Any

import httpx


@cache
def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def async_client(**kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=tls_context(), **kwargs)
