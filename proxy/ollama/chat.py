"""Ollama's inference routes: /api/chat and /api/generate, streamed as NDJSON or merged into one
answer; an empty request loads (or, with keep_alive 0, unloads) the model."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Request, Response, post

from proxy import tools
from proxy.llama import wire
from proxy.body import decode_body
from proxy.gateway import Gateway, gate_of
from proxy.llama.lease import Lease, Timer
from proxy.ollama import schemas, translate
from proxy.ollama.ndjson import json_response, now_rfc3339, respond
from proxy.semantics import ModelDefaults, Options
from supervisor.durations import request_keep_alive
from supervisor.errors import bad_request, not_found
from supervisor.models.model import Model
from supervisor.runners.scheduler import LoadOptions


def _load(options: Options | None, num_ctx: int, keep_alive: float | None) -> LoadOptions:
    o = options or Options()
    return LoadOptions(num_ctx=num_ctx, keep_alive=keep_alive, num_gpu=o.num_gpu, num_thread=o.num_thread,
                       num_batch=o.num_batch)



# Chat -----------------------------------------------------------------------------------------


def _add_tool_call(calls: dict[int, tuple[str, str, list[str]]], piece: wire.ToolCallDelta) -> None:
    call_id, name, parts = calls.get(piece.index, ("", "", []))
    if piece.function.arguments:
        parts.append(piece.function.arguments)
    calls[piece.index] = (piece.id or call_id or _call_id(), piece.function.name or name, parts)


_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def _call_id() -> str:
    # Ollama's own ids look like this when the runner gives none.
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(8))


async def _prompted_calls(
    chunks: AsyncIterator[schemas.ChatChunk], prompted: list[tools.Function]
) -> AsyncIterator[schemas.ChatChunk]:
    """A chat stream where tools were prompted (see `proxy.tools`): an answer that starts like a
    JSON object is held back; at its end its calls go out one per line, or it goes out as it came."""
    reader, held = tools.Reader(prompted), []
    try:
        async for c in chunks:
            if not c.done and c.message.content and reader.holds(c.message.content):
                if c.message.thinking:  # reasoning is never a call: it goes out at once
                    yield schemas.ChatChunk(c.model, c.created_at, schemas.OutMessage("assistant", "", c.message.thinking), False)
                held.append(msgspec.structs.replace(c, message=msgspec.structs.replace(c.message, thinking="")))
                continue
            calls = reader.calls() if c.done and held else None
            if calls is not None:
                for i, call in enumerate(calls):
                    out = schemas.OutToolCall(_call_id(), schemas.ToolCallFunction(call.name, call.arguments, i))
                    yield schemas.ChatChunk(c.model, c.created_at, schemas.OutMessage("assistant", "", tool_calls=[out]), False)
                held = []
            for h in held:
                yield h
            held = []
            yield c
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


@dataclass
class _Ending:
    """How llama-server ended a generation, filled in as its stream goes by; tool calls arrive
    in pieces ({index: (id, name, argument pieces)}) and are whole only at the end."""

    reason: str | None = None
    timings: wire.Timings | None = None
    calls: dict[int, tuple[str, str, list[str]]] = field(default_factory=dict)

    def tool_calls(self) -> list[schemas.OutToolCall]:
        return translate.tool_calls(self.calls, truncated=self.reason in ("length", "limit"))


@dataclass
class _Piece:
    content: str
    thinking: str = ""
    logprobs: list[schemas.Logprob] | None = None


async def _pieces(
    lease: Lease, body: wire.ChatRequest | wire.CompletionRequest | wire.InfillRequest,
    ending: _Ending,
) -> AsyncIterator[_Piece]:
    """What llama-server generates, from /completion, /infill or /v1/chat/completions."""
    if isinstance(body, wire.ChatRequest):
        async for chunk in lease.stream("/v1/chat/completions", body, wire.ChatChunk):
            ending.timings = chunk.timings or ending.timings
            for choice in chunk.choices:
                ending.reason = choice.finish_reason or ending.reason
                d = choice.delta
                for call in d.tool_calls or []:
                    _add_tool_call(ending.calls, call)
                logprobs = translate.logprobs(choice.logprobs.content if choice.logprobs else None)
                if d.content or d.reasoning_content or logprobs:
                    yield _Piece(d.content or "", d.reasoning_content or "", logprobs)
        return
    path = "/infill" if isinstance(body, wire.InfillRequest) else "/completion"
    async for c in lease.stream(path, body, wire.CompletionChunk):
        ending.timings = c.timings or ending.timings
        ending.reason = c.stop_type or ending.reason
        logprobs = translate.logprobs(c.completion_probabilities)
        if c.content or logprobs:
            yield _Piece(c.content, "", logprobs)


async def _chat_chunks(
    gate: Gateway, name: str, model: Model, load: LoadOptions, body: wire.ChatRequest
) -> AsyncIterator[schemas.ChatChunk]:
    timer, ending = Timer(), _Ending()
    async with gate.inference.lease(model, load, timer) as lease:
        async for p in _pieces(lease, body, ending):
            message = schemas.OutMessage("assistant", p.content, p.thinking)
            yield schemas.ChatChunk(name, now_rfc3339(), message, False, logprobs=p.logprobs)
    # Whole calls, one per line: Zed reads only the first call of a line.
    for call in ending.tool_calls():
        yield schemas.ChatChunk(name, now_rfc3339(), schemas.OutMessage("assistant", "", tool_calls=[call]), False)
    yield schemas.ChatChunk(
        name,
        now_rfc3339(),
        schemas.OutMessage("assistant", ""),
        True,
        translate.done_reason(ending.reason),
        **translate.metrics(ending.timings, timer.total_ns(), timer.load_ns),
    )


async def _merge_chat(chunks: AsyncIterator[schemas.ChatChunk]) -> schemas.ChatChunk:
    content, thinking, calls, logprobs = [], [], [], []
    async for c in chunks:
        content.append(c.message.content)
        thinking.append(c.message.thinking)
        calls.extend(c.message.tool_calls or [])
        logprobs.extend(c.logprobs or [])
    c.message = schemas.OutMessage("assistant", "".join(content), "".join(thinking), calls or None)
    c.logprobs = logprobs or None
    return c


async def _load_or_unload(gate: Gateway, model: Model, keep_alive: float | None, done: Callable[[str], Any]) -> Response[Any]:
    """An empty prompt loads the model; with keep_alive 0 it unloads it (Ollama's `stop`)."""
    if keep_alive == 0:
        await gate.scheduler.unload(model)
        return json_response(done("unload"))
    num_ctx = gate.scheduler.num_ctx(model, None)
    await gate.inference.load(model, LoadOptions(num_ctx=num_ctx, keep_alive=keep_alive))
    return json_response(done("load"))


@post("/api/chat")
async def chat(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.ChatRequest)
    if not req.model:
        raise bad_request("model is required")
    gate = gate_of(request)
    model = gate.catalog.require(req.model)
    keep_alive = request_keep_alive(req.keep_alive)
    if not req.messages:
        return await _load_or_unload(
            gate, model, keep_alive,
            lambda reason: schemas.ChatChunk(req.model, now_rfc3339(), schemas.OutMessage("assistant", ""), True, reason),
        )
    num_ctx = gate.scheduler.num_ctx(model, req.options.num_ctx if req.options else None)
    body = translate.chat_request(req, ModelDefaults.of(model), num_ctx, req.model, model.capabilities)
    chunks = _chat_chunks(gate, req.model, model, _load(req.options, num_ctx, keep_alive), body)
    prompted = translate.prompted_tools(req, model.capabilities)
    if prompted is not None:
        chunks = _prompted_calls(chunks, prompted)
    return await respond(chunks, req.stream is not False, _merge_chat)


# Generate -------------------------------------------------------------------------------------


async def _generate_chunks(
    gate: Gateway, req: schemas.GenerateRequest, model: Model, load: LoadOptions,
    body: wire.ChatRequest | wire.CompletionRequest | wire.InfillRequest,
) -> AsyncIterator[schemas.GenerateChunk]:
    """The answer, then a final chunk with the `context` tokens (prompt + answer) that a later
    request can send back, except for raw prompts and infill, as Ollama does."""
    name = req.model
    timer, ending = Timer(), _Ending()
    response: list[str] = []
    async with gate.inference.lease(model, load, timer) as lease:
        prompt = body.prompt if isinstance(body, wire.CompletionRequest) and not req.raw else None
        if isinstance(body, wire.ChatRequest) and not req.images:
            applied = await lease.post(
                "/apply-template", wire.ApplyTemplateRequest(body.messages, body.chat_template_kwargs),
                wire.ApplyTemplateResponse,
            )
            prompt = applied.prompt
            if req.context:
                body = translate.with_context(body, prompt, req.context)
        async for p in _pieces(lease, body, ending):
            response.append(p.content)
            yield schemas.GenerateChunk(model=name, created_at=now_rfc3339(), response=p.content,
                                        thinking=p.thinking, done=False, logprobs=p.logprobs)
        context = None
        if isinstance(prompt, str):
            tokens = await lease.post("/tokenize", wire.TokenizeRequest(prompt + "".join(response)),
                                      wire.TokenizeResponse)
            context = [*(req.context or []), *tokens.tokens]
    yield schemas.GenerateChunk(
        model=name,
        created_at=now_rfc3339(),
        response="",
        done=True,
        done_reason=translate.done_reason(ending.reason),
        context=context,
        **translate.metrics(ending.timings, timer.total_ns(), timer.load_ns),
    )


async def _merge_generate(chunks: AsyncIterator[schemas.GenerateChunk]) -> schemas.GenerateChunk:
    response, thinking, logprobs = [], [], []
    async for c in chunks:
        response.append(c.response)
        thinking.append(c.thinking)
        logprobs.extend(c.logprobs or [])
    c.response, c.thinking = "".join(response), "".join(thinking)
    c.logprobs = logprobs or None
    return c


@post("/api/generate")
async def generate(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.GenerateRequest)
    if not req.model:
        raise not_found("model '' not found")
    gate = gate_of(request)
    model = gate.catalog.require(req.model)
    keep_alive = request_keep_alive(req.keep_alive)
    if not req.prompt and not req.suffix:
        return await _load_or_unload(
            gate, model, keep_alive,
            lambda reason: schemas.GenerateChunk(model=req.model, created_at=now_rfc3339(), response="", done=True, done_reason=reason),
        )
    num_ctx = gate.scheduler.num_ctx(model, req.options.num_ctx if req.options else None)
    body = translate.generate_request(req, ModelDefaults.of(model), num_ctx, req.model, model.capabilities)
    chunks = _generate_chunks(gate, req, model, _load(req.options, num_ctx, keep_alive), body)
    return await respond(chunks, req.stream is not False, _merge_generate)
