"""The status page's routes: the page, its live feed, and its two actions (unload, pull). Keys are
checked in front of them (proxy/auth.py), not here."""

from __future__ import annotations

import secrets

from litestar import Request, Response, get, post
from litestar.response import Stream

from proxy.gateway import gate_of
from proxy.ui.events import events
from proxy.ui.page import render
from proxy.ui.snapshot import snapshot
from supervisor.errors import bad_request
from supervisor.names import ModelName


@get("/ui")
async def page(request: Request) -> Response[str]:
    nonce = secrets.token_urlsafe(16)
    # Nothing runs or loads but the page's own style and script; it talks to its own origin only.
    policy = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
              "img-src data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
    return Response(render(snapshot(gate_of(request)), nonce), media_type="text/html",
                    headers={"Content-Security-Policy": policy, "Cache-Control": "no-store"})


@get("/ui/events")
async def feed(request: Request) -> Stream:
    return Stream(events(gate_of(request)), media_type="text/event-stream",
                  headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _model(request: Request) -> str:
    text = (await request.form()).get("model", "").strip()
    if not text:
        raise bad_request("model is required")
    return text


def _done(request: Request) -> Response[None]:
    """204 for the page's script; a form posted without script goes back to the page."""
    if request.headers.get("x-requested-with") == "fetch":
        return Response(None, status_code=204)
    return Response(None, status_code=303, headers={"Location": "/ui"})


@post("/ui/unload")
async def unload(request: Request) -> Response[None]:
    gate = gate_of(request)
    await gate.scheduler.unload(gate.catalog.require(await _model(request)))
    return _done(request)


@post("/ui/pull")
async def pull(request: Request) -> Response[None]:
    text = await _model(request)
    ModelName.parse(text)  # a bad name is the form's 400, not an entry in the list
    gate_of(request).pulls.start(text)
    return _done(request)


ROUTES = [page, feed, unload, pull]
