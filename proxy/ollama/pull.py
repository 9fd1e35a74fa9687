"""Ollama's /api/pull: a model from a registry, its progress streamed as NDJSON status lines
(or only the last one); every pull is recorded in the Gateway's `Pulls` for the status page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post

from proxy.body import decode_body
from proxy.gateway import Gateway, gate_of
from proxy.ollama import schemas
from proxy.ollama.ndjson import respond


async def _pull_chunks(gate: Gateway, req: schemas.PullRequest) -> AsyncIterator[schemas.ProgressResponse]:
    async for p in gate.pulls.track(req.model or req.name, req.insecure):
        yield schemas.ProgressResponse(p.status, p.digest, p.total, p.completed)


async def _last(chunks: AsyncIterator[schemas.ProgressResponse]) -> schemas.ProgressResponse:
    async for c in chunks:
        pass
    return c


@post("/api/pull")
async def pull(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.PullRequest)
    return await respond(_pull_chunks(gate_of(request), req), req.stream is not False, _last)
