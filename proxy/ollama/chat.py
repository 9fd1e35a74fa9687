"""Ollama's inference routes: /api/chat and /api/generate, streamed as NDJSON or merged into one
answer; an empty request loads (or, with keep_alive 0, unloads) the model."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Request, Response, post

from proxy import tools, truncation
from proxy.rendering import DebugInfo, rendered
from proxy.llama import wire
from proxy.body import INFERENCE_BODY_LIMIT, decode_body
from proxy.gateway import Gateway, gate_of
from proxy.llama.lease import Lease, Timer
from proxy.ollama import schemas, translate
from proxy.ollama.ndjson import json_response, now_rfc3339, respond
from proxy.semantics import ModelDefaults, Options
from supervisor.durations import request_keep_alive
from supervisor.errors import bad_request, not_found
from supervisor.models.model import Model
from supervisor.runners.scheduler import LoadOptions


def _load(options: Options | None, num_ctx: int, keep_alive: float | None, shift: bool | None) -> LoadOptions:
    o = options or Options()
    return LoadOptions(num_ctx=num_ctx, keep_alive=keep_alive, num_gpu=o.num_gpu, num_thread=o.num_thread,
                       num_batch=o.num_batch, main_gpu=o.main_gpu, use_mmap=o.use_mmap, use_mlock=o.use_mlock,
                       context_shift=shift is not False)


# Fitting num_ctx (see proxy/truncation.py) ------------------------------------------------------

# Ollama's answer to a prompt over num_ctx when the context may not shift.
_NO_SHIFT = ("the prompt is longer than the context length currently available to the model; shorten the "
             "prompt, adjust the context length in settings, or use a model with a longer context length")

Body = wire.ChatRequest | wire.CompletionRequest | wire.InfillRequest


async def _prompt_tokens(lease: Lease, prompt: str | list[int | str]) -> list[int]:
    """A /completion prompt as the tokens llama-server makes of it (text after token ids gets no
    BOS of its own)."""
    if isinstance(prompt, str):
        return (await lease.post("/tokenize", wire.TokenizeRequest(prompt, add_special=True), wire.TokenizeResponse)).tokens
    out: list[int] = []
    for part in prompt:
        if isinstance(part, int):
            out.append(part)
        else:
            out += (await lease.post("/tokenize", wire.TokenizeRequest(part), wire.TokenizeResponse)).tokens
    return out


def _cut_prompt(lease: Lease, num_ctx: int, shift: bool) -> Callable[[Body], Awaitable[Body | None]]:
    async def cut(body: Body) -> Body | None:
        """A prompt cut to its first num_keep tokens and its end, as Ollama cuts one; without
        context shift, Ollama's refusal."""
        if not isinstance(body, wire.CompletionRequest):
            return None
        if not shift:
            raise bad_request(_NO_SHIFT)
        tokens = await _prompt_tokens(lease, body.prompt)
        bos = len((await lease.post("/tokenize", wire.TokenizeRequest("", add_special=True), wire.TokenizeResponse)).tokens)
        num_keep = body.n_keep if body.n_keep is not None else 0
        return msgspec.structs.replace(body, prompt=translate.shifted_prompt(tokens, num_ctx, num_keep, bos))
    return cut



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
    tokens: list[int] = field(default_factory=list)  # its token ids, from /completion with return_tokens


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
        if c.content or logprobs or c.tokens:
            yield _Piece(c.content, "", logprobs, c.tokens)


async def _chat_chunks(
    gate: Gateway, name: str, model: Model, load: LoadOptions, body: wire.ChatRequest, truncate: bool,
) -> AsyncIterator[schemas.ChatChunk]:
    timer, ending = Timer(), _Ending()
    async with gate.inference.lease(model, load, timer) as lease:
        refit = truncation.chat_cutter(lease, load.num_ctx or 0) if truncate else None
        async for p in truncation.fitted(body, lambda b: _pieces(lease, b, ending), refit):
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


async def _load_or_unload(gate: Gateway, model: Model, load: LoadOptions, done: Callable[[str], Any]) -> Response[Any]:
    """An empty prompt loads the model with the request's load options, as a real request with
    them would (so that the next one finds it ready); with keep_alive 0 it unloads it (Ollama's
    `stop`)."""
    if load.keep_alive == 0:
        await gate.scheduler.unload(model)
        return json_response(done("unload"))
    await gate.inference.load(model, load)
    return json_response(done("load"))


@post("/api/chat", request_max_body_size=INFERENCE_BODY_LIMIT)
async def chat(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.ChatRequest)
    if not req.model:
        raise bad_request("model is required")
    gate = gate_of(request)
    model = await gate.catalog.resolve(req.model)
    if (forwarded := await gate.remote.forward(request, model)) is not None:
        return forwarded
    num_ctx = await gate.num_ctx(model, req.options.num_ctx if req.options else None)
    load = _load(req.options, num_ctx, request_keep_alive(req.keep_alive), req.shift)
    if not req.messages:
        return await _load_or_unload(
            gate, model, load,
            lambda reason: schemas.ChatChunk(req.model, now_rfc3339(), schemas.OutMessage("assistant", ""), True, reason),
        )
    body = translate.chat_request(req, ModelDefaults.of(model), num_ctx, req.model, model.capabilities)
    if req.debug_render_only:  # Ollama's answer: a chunk with no message of its own
        info = DebugInfo(await rendered(gate.inference, model, load, body), sum(len(m.images or []) for m in req.messages))
        empty = schemas.OutMessage("", "")
        return json_response(schemas.ChatChunk(req.model, now_rfc3339(), empty, False, debug_info=info))
    chunks = _chat_chunks(gate, req.model, model, load, body, req.truncate is not False)
    prompted = translate.prompted_tools(req, model.capabilities)
    if prompted is not None:
        chunks = _prompted_calls(chunks, prompted)
    return await respond(chunks, req.stream is not False, _merge_chat)


# Generate -------------------------------------------------------------------------------------


async def _generate_chunks(
    gate: Gateway, req: schemas.GenerateRequest, model: Model, load: LoadOptions, body: Body,
) -> AsyncIterator[schemas.GenerateChunk]:
    """The answer, then a final chunk with the `context` tokens (prompt + answer) that a later
    request can send back, except for raw prompts and infill, as Ollama does.

    A prompt the model's template renders goes to /completion as that text, so that the answer's
    tokens come back as llama-server generated them; not for a model that can think (only the
    chat route parts thinking from the answer) nor with images: those answers are tokenized."""
    name = req.model
    timer, ending = Timer(), _Ending()
    response: list[str] = []
    generated: list[int] = []
    context = None
    async with gate.inference.lease(model, load, timer) as lease:
        rendered = None
        if isinstance(body, wire.ChatRequest) and not req.images:
            applied = await lease.post(
                "/apply-template", wire.ApplyTemplateRequest(body.messages, body.chat_template_kwargs),
                wire.ApplyTemplateResponse,
            )
            rendered = applied.prompt
            if req.context or "thinking" not in model.capabilities:
                body = translate.with_context(body, rendered, req.context or [])
        elif isinstance(body, wire.CompletionRequest) and not req.raw:
            body = msgspec.structs.replace(body, return_tokens=True)
        refit = _cut_prompt(lease, load.num_ctx or 0, load.context_shift) if req.truncate is not False else None
        # The context's prompt part (the whole prompt, as Ollama's context has it even when it
        # was cut to fit) is tokenized beside the generation, not after it.
        prompt_tokens = None
        if isinstance(body, wire.CompletionRequest) and body.return_tokens:
            prompt_tokens = asyncio.ensure_future(_prompt_tokens(lease, body.prompt))
        try:
            async for p in truncation.fitted(body, lambda b: _pieces(lease, b, ending), refit):
                response.append(p.content)
                generated += p.tokens
                yield schemas.GenerateChunk(model=name, created_at=now_rfc3339(), response=p.content,
                                            thinking=p.thinking, done=False, logprobs=p.logprobs)
            if prompt_tokens is not None:
                context = [*await prompt_tokens, *generated]
        finally:
            if prompt_tokens is not None:
                prompt_tokens.cancel()  # a stream that failed or was left needs it no more
                await asyncio.wait([prompt_tokens])
                if not prompt_tokens.cancelled():
                    prompt_tokens.exception()  # seen: a failure of both reports the stream's
        if prompt_tokens is None and rendered is not None:
            tokens = await lease.post("/tokenize", wire.TokenizeRequest(rendered + "".join(response)),
                                      wire.TokenizeResponse)
            context = tokens.tokens
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


@post("/api/generate", request_max_body_size=INFERENCE_BODY_LIMIT)
async def generate(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.GenerateRequest)
    if not req.model:
        raise not_found("model '' not found")
    gate = gate_of(request)
    model = await gate.catalog.resolve(req.model)
    if (forwarded := await gate.remote.forward(request, model)) is not None:
        return forwarded
    num_ctx = await gate.num_ctx(model, req.options.num_ctx if req.options else None)
    load = _load(req.options, num_ctx, request_keep_alive(req.keep_alive), req.shift)
    if not req.prompt and not req.suffix:
        return await _load_or_unload(
            gate, model, load,
            lambda reason: schemas.GenerateChunk(model=req.model, created_at=now_rfc3339(), response="", done=True, done_reason=reason),
        )
    body = translate.generate_request(req, ModelDefaults.of(model), num_ctx, req.model, model.capabilities)
    if req.debug_render_only:
        info = DebugInfo(await rendered(gate.inference, model, load, body, req.context), len(req.images or []))
        return json_response(schemas.GenerateChunk(model=req.model, created_at=now_rfc3339(), response="", done=False,
                                                   debug_info=info))
    chunks = _generate_chunks(gate, req, model, load, body)
    return await respond(chunks, req.stream is not False, _merge_generate)
