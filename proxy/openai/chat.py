"""OpenAI's /v1/chat/completions and /v1/completions: one upstream request per choice (and per
prompt), answered whole or streamed, forced tool calls and infill included."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request, Response, post

from proxy import tools, truncation
from proxy.rendering import DebugInfo, rendered
from proxy.llama import wire
from proxy.body import INFERENCE_BODY_LIMIT
from proxy.gateway import Gateway
from proxy.llama.lease import Timer
from proxy.openai import schemas, translate
from proxy.openai.models import begin, load_options, new_id, rewrites_of
from proxy.openai.sse import all_results, answer_stream, fan_in, json_answer
from proxy.semantics import ModelDefaults
from supervisor.errors import LlamagateError, bad_request
from supervisor.models.model import Model
from supervisor.runners.scheduler import LoadOptions


async def _answer(
    req: schemas._Sampling,
    bodies: list[Any],
    stream: Callable[[Any], AsyncIterator[wire.OpenAIResult]],
    call: Callable[[Any], Awaitable[wire.OpenAIResult]],
    choice: Callable[[int, wire.OpenAIChoice], Any],
    make: Callable[[list[Any], schemas.Usage | None], msgspec.Struct],
) -> Response[Any]:
    """One OpenAI answer from one upstream request per choice: choice i is request i's answer,
    whole or streamed as it comes, with the usage of them all."""
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def chunks() -> AsyncIterator[msgspec.Struct]:
            usages = [wire.Usage()] * len(bodies)
            async for i, r in fan_in([stream(b) for b in bodies]):
                if r.usage:
                    usages[i] = r.usage
                if r.choices:
                    yield make([choice(i, c) for c in r.choices], None)
            if include_usage:
                yield make([], translate.usage(usages, req.n))

        return await answer_stream(chunks())
    results = await all_results(call(b) for b in bodies)
    return json_answer(make(
        [choice(i, c) for i, r in enumerate(results) for c in r.choices],
        translate.usage([r.usage or wire.Usage() for r in results], req.n),
    ))


_CHAT = "/v1/chat/completions"


@post(_CHAT, request_max_body_size=INFERENCE_BODY_LIMIT)
async def chat_completions(request: Request) -> Response[Any]:
    gate, req, model = await begin(request, schemas.ChatCompletionRequest)
    if (forwarded := await gate.remote.forward(request, model)) is not None:
        return forwarded
    if translate.has_images(req.messages) and "vision" not in model.capabilities:
        raise bad_request(f"model '{req.model}' does not support image input")
    load = await load_options(gate, model, req)
    rewrites = rewrites_of(gate)
    native_tools = "tools" in model.capabilities
    prompted = translate.prompted_tools(req, native_tools)
    body = translate.chat_request(req, ModelDefaults.of(model), load.num_ctx or 0, rewrites, native_tools,
                                  req.model, model.capabilities)

    # A chat longer than num_ctx is cut to fit, as Ollama's /v1 does (it has no `truncate`).
    async def stream(b: wire.ChatRequest) -> AsyncIterator[wire.OpenAIResult]:
        async with gate.inference.lease(model, load) as lease:
            chunks = truncation.fitted(b, lambda body: lease.stream(_CHAT, body, wire.OpenAIResult),
                                       truncation.chat_cutter(lease, load.num_ctx or 0))
            async for r in (_prompted_stream(chunks, prompted) if prompted is not None else chunks):
                yield r

    async def call(b: wire.ChatRequest) -> wire.OpenAIResult:
        async with gate.inference.lease(model, load) as lease:
            r = await truncation.fitted_call(b, lambda body: lease.post(_CHAT, body, wire.OpenAIResult),
                                             truncation.chat_cutter(lease, load.num_ctx or 0))
        if prompted is not None:
            r.choices = [translate.prompted_choice(c, prompted, _call_id) for c in r.choices]
        return r

    head = {"id": new_id("chatcmpl-"), "created": int(time.time()), "model": req.model,
            "system_fingerprint": translate.SYSTEM_FINGERPRINT}
    if req.debug_render_only:
        parts = [p for m in req.messages if isinstance(m.content, list) for p in m.content]
        images = sum(isinstance(p, schemas.ImagePart) for p in parts)
        info = DebugInfo(await rendered(gate.inference, model, load, body), images)
        empty = schemas.ChatChoice(0, msgspec.Raw(b'{"role":"assistant","content":""}'), msgspec.Raw(b"null"), None)
        return json_answer(schemas.RenderedChat(**head, choices=[empty], usage=schemas.Usage(), debug_info=info))
    choice: Callable[[int, wire.OpenAIChoice], Any]
    if req.stream:
        choice = lambda i, c: translate.chunk_choice(i, c, rewrites)  # noqa: E731
        make = lambda choices, usage: schemas.ChatCompletionChunk(**head, choices=choices, usage=usage)  # noqa: E731
    else:
        choice = lambda i, c: translate.chat_choice(i, c, rewrites)  # noqa: E731
        make = lambda choices, usage: schemas.ChatCompletion(**head, choices=choices, usage=usage)  # noqa: E731
    return await _answer(req, [body] * req.n, stream, call, choice, make)


def _call_id() -> str:
    return new_id("call_")


async def _prompted_stream(
    chunks: AsyncIterator[wire.OpenAIResult], prompted: list[tools.Function]
) -> AsyncIterator[wire.OpenAIResult]:
    """A stream where tools were prompted (see `proxy.tools`): an answer that starts like a JSON
    object is held back; at its end it is sent as one delta of tool calls, or as it came."""
    reader, held = tools.Reader(prompted), []
    try:
        async for r in chunks:
            if not r.choices:
                yield r
            for c in r.choices:
                text = translate.content_of(c.delta)
                if c.finish_reason is None and text and reader.holds(text):
                    held.append(c)
                    continue
                if c.finish_reason is not None and held:
                    reader.holds(text)
                    delta = translate.prompted_call("".join(reader.text), prompted, _call_id, delta=True)
                    if delta is not None:
                        for choice in translate.prompted_finish(delta):
                            yield wire.OpenAIResult([choice])
                        held = []
                        continue
                for choice in [*held, c]:
                    yield wire.OpenAIResult([choice])
                held = []
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def _no_infill(e: LlamagateError, model: Model) -> LlamagateError:
    # llama-server answers 501 when the model has no fill-in-the-middle tokens: that's the
    # client's choice of model, so a 400 as Ollama's "does not support insert".
    if e.status == 501:
        return bad_request(f"{model.name.display} does not support insert (suffix): it has no fill-in-the-middle tokens")
    return e


async def _completion_stream(
    gate: Gateway, model: Model, load: LoadOptions, body: wire.CompletionRequest | wire.InfillRequest
) -> AsyncIterator[wire.OpenAIResult]:
    if isinstance(body, wire.InfillRequest):
        try:
            async for c in gate.inference.stream(model, load, "/infill", body, wire.CompletionChunk, Timer()):
                yield wire.OpenAIResult([translate.infill_choice(c)], translate.infill_usage(c))
        except LlamagateError as e:
            raise _no_infill(e, model) from None
    else:
        async for r in gate.inference.stream(model, load, "/v1/completions", body, wire.OpenAIResult, Timer()):
            yield r


async def _completion_call(
    gate: Gateway, model: Model, load: LoadOptions, body: wire.CompletionRequest | wire.InfillRequest
) -> wire.OpenAIResult:
    if isinstance(body, wire.InfillRequest):
        try:
            c = await gate.inference.call(model, load, "/infill", body, wire.CompletionChunk)
        except LlamagateError as e:
            raise _no_infill(e, model) from None
        return wire.OpenAIResult([translate.infill_choice(c)], translate.infill_usage(c))
    return await gate.inference.call(model, load, "/v1/completions", body, wire.OpenAIResult)


@post("/v1/completions", request_max_body_size=INFERENCE_BODY_LIMIT)
async def completions(request: Request) -> Response[Any]:
    gate, req, model = await begin(request, schemas.CompletionRequest)
    if (forwarded := await gate.remote.forward(request, model)) is not None:
        return forwarded
    load = await load_options(gate, model, req)
    rewrites = rewrites_of(gate)
    defaults = ModelDefaults.of(model)
    # Choice p·n + j is the j-th answer to prompt p, as OpenAI numbers them.
    bodies = [
        translate.completion_request(req, prompt, defaults, load.num_ctx or 0, rewrites)
        for prompt in translate.prompts(req)
        for _ in range(req.n)
    ]
    head = {"id": new_id("cmpl-"), "created": int(time.time()), "model": req.model,
            "system_fingerprint": translate.SYSTEM_FINGERPRINT}
    return await _answer(
        req, bodies,
        lambda b: _completion_stream(gate, model, load, b),
        lambda b: _completion_call(gate, model, load, b),
        lambda i, c: translate.text_choice(i, c, rewrites),
        lambda choices, usage: schemas.Completion(**head, choices=choices, usage=usage),
    )
