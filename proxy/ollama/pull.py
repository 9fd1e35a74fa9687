"""Ollama's /api/pull and /api/push: a model from or to a registry, the progress streamed as NDJSON
status lines (or only the last one); every pull is recorded in the Gateway's `Pulls` for the
status page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post

from proxy.body import decode_body
from proxy.gateway import gate_of
from proxy.ollama import schemas
from proxy.ollama.ndjson import respond
from supervisor.pull.registry import Progress


async def _lines(steps: AsyncIterator[Progress]) -> AsyncIterator[schemas.ProgressResponse]:
    async for p in steps:
        yield schemas.ProgressResponse(p.status, p.digest, p.total, p.completed)


async def _last(chunks: AsyncIterator[schemas.ProgressResponse]) -> schemas.ProgressResponse:
    async for c in chunks:
        pass
    return c


@post("/api/pull")
async def pull(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.PullRequest)
    steps = gate_of(request).pulls.track(req.model or req.name, req.insecure)
    return await respond(_lines(steps), req.stream is not False, _last)


@post("/api/push")
async def push(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.PushRequest)
    steps = gate_of(request).pusher.push(req.model or req.name, req.insecure)
    return await respond(_lines(steps), req.stream is not False, _last)
