"""Routes passed through to llama-server's own implementation: the Responses API and Anthropic's
Messages API, routed by `model` and relayed with the model named as asked."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post

from proxy.body import INFERENCE_BODY_LIMIT, decode_body
from proxy.openai import schemas, translate
from proxy.gateway import gate_of
from proxy.semantics import think_kwargs
from proxy.openai.models import load_options, require_model
from proxy.openai.sse import JSON, encode, sse_event, sse_stream
from supervisor.errors import LlamagateError

log = logging.getLogger("llamagate.openai")


# The events that carry the whole response object, and with it the model's name.
_NAMED_EVENTS = {"", "response.created", "response.in_progress", "response.completed", "response.failed",
                 "response.incomplete", "message_start"}


def _stream_error(path: str, e: LlamagateError) -> bytes:
    if path.startswith("/v1/messages"):
        return sse_event(encode(translate.anthropic_error(e.status, e.message)), "error")
    return sse_event(encode(schemas.ResponsesStreamError(message=e.message, code=e.code)), "error")


async def _relay_sse(path: str, name: str, events: AsyncIterator[tuple[str, bytes]]) -> AsyncIterator[bytes]:
    try:
        async for event, data in events:
            yield sse_event(translate.rename_model(data, name) if event in _NAMED_EVENTS else data, event)
    except LlamagateError as e:
        yield _stream_error(path, e)
    except Exception:
        log.exception("stream failed")
        yield _stream_error(path, LlamagateError(500, "internal error while streaming the answer"))
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def _relay(request: Request, path: str) -> Response[Any]:
    """Route by `model` to its runner and let llama-server's own implementation answer."""
    req = await decode_body(request, schemas.Routed)
    gate = gate_of(request)
    model = await require_model(gate, req.model)
    if (forwarded := await gate.remote.forward(request, model)) is not None:
        return forwarded
    body = await request.body()
    if path == "/v1/responses" and req.reasoning is not None:
        think = translate.responses_think(req.reasoning.effort)
        body = translate.with_template_kwargs(body, think_kwargs(think, req.model, model.capabilities))
    events = gate.inference.relay(model, await load_options(gate, model, req), path, body)
    event, data = await anext(events)
    if event is None:
        await events.aclose()  # type: ignore[attr-defined]
        return Response(translate.rename_model(data, req.model), media_type=JSON, status_code=200)

    async def replay() -> AsyncIterator[tuple[str, bytes]]:
        try:
            yield event, data
            async for item in events:
                yield item
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return sse_stream(_relay_sse(path, req.model, replay()))


@post("/v1/responses", request_max_body_size=INFERENCE_BODY_LIMIT)
async def responses(request: Request) -> Response[Any]:
    return await _relay(request, "/v1/responses")


@post("/v1/messages", request_max_body_size=INFERENCE_BODY_LIMIT)
async def messages(request: Request) -> Response[Any]:
    return await _relay(request, "/v1/messages")


@post("/v1/messages/count_tokens", request_max_body_size=INFERENCE_BODY_LIMIT)
async def count_tokens(request: Request) -> Response[Any]:
    return await _relay(request, "/v1/messages/count_tokens")
