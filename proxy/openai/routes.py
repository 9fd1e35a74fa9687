"""The OpenAI-compatible routes (`/v1/*`, SSE), and the Anthropic Messages route: decode, resolve
the model, send one upstream request per choice, answer in OpenAI's shapes and errors."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Stream

from proxy.llama import wire
from proxy.body import decode_body
from proxy.gateway import Gateway, model_defaults
from proxy.llama.lease import Timer
from proxy.openai import schemas, translate
from supervisor.durations import request_keep_alive
from supervisor.errors import LlamagateError, bad_request
from supervisor.models.gguf import cached_info
from supervisor.runners.scheduler import LoadOptions
from supervisor.models.store import PROJECTOR, StoredModel

log = logging.getLogger("llamagate.openai")

SSE = "text/event-stream"
JSON = "application/json"
_encode = msgspec.json.Encoder().encode
T = TypeVar("T")


def _gate(request: Request) -> Gateway:
    return request.app.state.gate


def _rewrites(gate: Gateway) -> translate.Rewrites:
    return translate.Rewrites(gate.config.openai_seed_greedy, gate.config.openai_finish_stop)


def _json(obj: msgspec.Struct, status: int = 200) -> Response[bytes]:
    return Response(_encode(obj), status_code=status, media_type=JSON)


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _require(gate: Gateway, name: str) -> StoredModel:
    """The model a request names; an unknown one is OpenAI's 404 `model_not_found`."""
    if not name:
        raise bad_request("you must provide a model parameter")
    try:
        return gate.store.require(name)
    except LlamagateError as e:
        if e.status == 404:
            raise LlamagateError(404, f"The model '{name}' does not exist", "model_not_found") from None
        raise


def _load(gate: Gateway, model: StoredModel, req: schemas._Extensions, embedding: bool = False) -> LoadOptions:
    """The load-time options of the `options`, `num_ctx` and `keep_alive` extensions."""
    keep_alive = request_keep_alive(req.keep_alive)
    o = req.options
    return LoadOptions(
        num_ctx=gate.scheduler.num_ctx(model, translate.requested_num_ctx(req)),
        keep_alive=keep_alive,
        num_gpu=o.num_gpu if o else None,
        num_thread=o.num_thread if o else None,
        num_batch=o.num_batch if o else None,
        embedding=embedding,
    )


async def _all(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Every result, or the first failure with the other calls cancelled."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


_END = object()


async def _fan_in(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """The items of several streams as they come, each with its stream's index; the first
    failure ends it all (and closing it closes every stream, freeing their slots)."""
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((i, item, None))
            await queue.put((i, _END, None))
        except Exception as e:
            await queue.put((i, None, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, item, error = await queue.get()
            if error is not None:
                raise error
            if item is _END:
                running -= 1
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        # asyncio.wait, not gather: a cancelled gather cancels its tasks again, and anyio cancels
        # the task of a request whose client is gone over and over, which would interrupt the
        # tasks' closing of their upstream connections (and leave llama-server generating).
        await asyncio.wait(tasks)


def _event(data: bytes, event: str = "") -> bytes:
    return (f"event: {event}\n".encode() if event else b"") + b"data: " + data + b"\n\n"


async def _sse(first: msgspec.Struct, rest: AsyncIterator[msgspec.Struct]) -> AsyncIterator[bytes]:
    """OpenAI's stream: `data:` events, then `data: [DONE]`; a failure after the first event is
    a `data: {"error": ...}` event before the `[DONE]`, never a silently cut stream."""
    try:
        yield _event(_encode(first))
        async for chunk in rest:
            yield _event(_encode(chunk))
    except LlamagateError as e:
        yield _event(_encode(translate.error(e.status, e.message, e.code)))
    except Exception:
        log.exception("stream failed")
        yield _event(_encode(translate.error(500, "internal error while streaming the answer")))
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
    yield _event(b"[DONE]")


async def _stream(chunks: AsyncIterator[msgspec.Struct]) -> Response[Any]:
    """Headers wait for the first chunk, so a failure before it (a load error, a context
    overflow) still gets its real status and error body."""
    first = await anext(chunks)
    return Stream(_sse(first, chunks), media_type=SSE, status_code=200, headers={"Cache-Control": "no-cache"})


# Chat and completions ------------------------------------------------------------------------


async def _begin(request: Request, type_: type[T]) -> tuple[Gateway, T, StoredModel]:
    req = await decode_body(request, type_)
    gate = _gate(request)
    model = _require(gate, req.model)  # type: ignore[attr-defined]
    if req.user:  # type: ignore[attr-defined]
        log.info("%s for user %r", request.url.path, req.user)  # type: ignore[attr-defined]
    return gate, req, model


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
            async for i, r in _fan_in([stream(b) for b in bodies]):
                if r.usage:
                    usages[i] = r.usage
                if r.choices:
                    yield make([choice(i, c) for c in r.choices], None)
            if include_usage:
                yield make([], translate.usage(usages, req.n))

        return await _stream(chunks())
    results = await _all(call(b) for b in bodies)
    return _json(make(
        [choice(i, c) for i, r in enumerate(results) for c in r.choices],
        translate.usage([r.usage or wire.Usage() for r in results], req.n),
    ))


_CHAT = "/v1/chat/completions"


@post(_CHAT)
async def chat_completions(request: Request) -> Response[Any]:
    gate, req, model = await _begin(request, schemas.ChatCompletionRequest)
    if translate.has_images(req.messages) and not any(la.mediaType == PROJECTOR for la in model.manifest.layers):
        raise bad_request(f"model '{req.model}' does not support image input")
    load = _load(gate, model, req)
    rewrites = _rewrites(gate)
    native_tools = "tools" in cached_info(model.model_path).chat_template
    forced = translate.forced_tools(req, native_tools)
    body = translate.chat_request(req, model_defaults(model), load.num_ctx or 0, rewrites, forced)

    async def stream(b: wire.ChatRequest) -> AsyncIterator[wire.OpenAIResult]:
        chunks = gate.inference.stream(model, load, _CHAT, b, wire.OpenAIResult, Timer())
        async for r in (_forced_stream(chunks) if forced is not None else chunks):
            yield r

    async def call(b: wire.ChatRequest) -> wire.OpenAIResult:
        r = await gate.inference.call(model, load, _CHAT, b, wire.OpenAIResult)
        if forced is not None:
            r.choices = [translate.forced_choice(c, _new_id("call_")) for c in r.choices]
        return r

    head = {"id": _new_id("chatcmpl-"), "created": int(time.time()), "model": req.model,
            "system_fingerprint": translate.SYSTEM_FINGERPRINT}
    choice: Callable[[int, wire.OpenAIChoice], Any]
    if req.stream:
        choice = lambda i, c: translate.chunk_choice(i, c, rewrites)  # noqa: E731
        make = lambda choices, usage: schemas.ChatCompletionChunk(**head, choices=choices, usage=usage)  # noqa: E731
    else:
        choice = lambda i, c: translate.chat_choice(i, c, rewrites)  # noqa: E731
        make = lambda choices, usage: schemas.ChatCompletion(**head, choices=choices, usage=usage)  # noqa: E731
    return await _answer(req, [body] * req.n, stream, call, choice, make)


async def _forced_stream(chunks: AsyncIterator[wire.OpenAIResult]) -> AsyncIterator[wire.OpenAIResult]:
    """A forced tool call's stream: the call's JSON is held back and sent as one tool call."""
    text: list[str] = []
    async for r in chunks:
        if not r.choices:
            yield r
        for c in r.choices:
            if c.finish_reason is None:
                text.append(translate.content_of(c.delta))
            else:
                for choice in translate.forced_finish("".join(text), c.finish_reason, _new_id("call_")):
                    yield wire.OpenAIResult([choice])


def _no_infill(e: LlamagateError, model: StoredModel) -> LlamagateError:
    # llama-server answers 501 when the model has no fill-in-the-middle tokens: that's the
    # client's choice of model, so a 400 as Ollama's "does not support insert".
    if e.status == 501:
        return bad_request(f"{model.name.display} does not support insert (suffix): it has no fill-in-the-middle tokens")
    return e


async def _completion_stream(
    gate: Gateway, model: StoredModel, load: LoadOptions, body: wire.CompletionRequest | wire.InfillRequest
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
    gate: Gateway, model: StoredModel, load: LoadOptions, body: wire.CompletionRequest | wire.InfillRequest
) -> wire.OpenAIResult:
    if isinstance(body, wire.InfillRequest):
        try:
            c = await gate.inference.call(model, load, "/infill", body, wire.CompletionChunk)
        except LlamagateError as e:
            raise _no_infill(e, model) from None
        return wire.OpenAIResult([translate.infill_choice(c)], translate.infill_usage(c))
    return await gate.inference.call(model, load, "/v1/completions", body, wire.OpenAIResult)


@post("/v1/completions")
async def completions(request: Request) -> Response[Any]:
    gate, req, model = await _begin(request, schemas.CompletionRequest)
    load = _load(gate, model, req)
    rewrites = _rewrites(gate)
    defaults = model_defaults(model)
    # Choice p·n + j is the j-th answer to prompt p, as OpenAI numbers them.
    bodies = [
        translate.completion_request(req, prompt, defaults, load.num_ctx or 0, rewrites)
        for prompt in translate.prompts(req)
        for _ in range(req.n)
    ]
    head = {"id": _new_id("cmpl-"), "created": int(time.time()), "model": req.model,
            "system_fingerprint": translate.SYSTEM_FINGERPRINT}
    return await _answer(
        req, bodies,
        lambda b: _completion_stream(gate, model, load, b),
        lambda b: _completion_call(gate, model, load, b),
        lambda i, c: translate.text_choice(i, c, rewrites),
        lambda choices, usage: schemas.Completion(**head, choices=choices, usage=usage),
    )


# Embeddings and models -----------------------------------------------------------------------


@post("/v1/embeddings")
async def embeddings(request: Request) -> Response[bytes]:
    req = await decode_body(request, schemas.EmbeddingRequest)
    gate = _gate(request)
    model = _require(gate, req.model)
    body = wire.EmbeddingsRequest(translate.embedding_input(req))
    result = await gate.inference.call(model, _load(gate, model, req, embedding=True), "/v1/embeddings", body,
                                       wire.EmbeddingsResponse)
    return _json(schemas.EmbeddingList(
        data=[
            schemas.Embedding(d.index, translate.embedding(d.embedding, req.dimensions, req.encoding_format))
            for d in result.data
        ],
        model=req.model,
        usage=schemas.EmbeddingUsage(result.usage.prompt_tokens, result.usage.prompt_tokens),
    ))


def _model_object(model: StoredModel, name: str) -> schemas.Model:
    return schemas.Model(id=name, created=int(model.manifest_path.stat().st_mtime), owned_by=model.name.namespace)


@get("/v1/models")
async def list_models(request: Request) -> Response[bytes]:
    return _json(schemas.ModelList([_model_object(m, m.name.display) for m in _gate(request).store.list()]))


@get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> Response[bytes]:
    """The path may hold slashes (`hf.co/user/repo:tag`); the id is the name as asked."""
    name = model.lstrip("/")
    return _json(_model_object(_require(_gate(request), name), name))


# Passed through: the Responses API and Anthropic's Messages API ------------------------------

# The events that carry the whole response object, and with it the model's name.
_NAMED_EVENTS = {"", "response.created", "response.in_progress", "response.completed", "response.failed",
                 "response.incomplete", "message_start"}


def _stream_error(path: str, e: LlamagateError) -> bytes:
    if path.startswith("/v1/messages"):
        return _event(_encode(translate.anthropic_error(e.status, e.message)), "error")
    return _event(_encode(schemas.ResponsesStreamError(message=e.message, code=e.code)), "error")


async def _relay_sse(path: str, name: str, events: AsyncIterator[tuple[str, bytes]]) -> AsyncIterator[bytes]:
    try:
        async for event, data in events:
            yield _event(translate.rename_model(data, name) if event in _NAMED_EVENTS else data, event)
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
    gate = _gate(request)
    model = _require(gate, req.model)
    events = gate.inference.relay(model, _load(gate, model, req), path, await request.body())
    event, data = await anext(events)
    if not event and not req.stream:
        await events.aclose()  # type: ignore[attr-defined]
        return Response(translate.rename_model(data, req.model), media_type=JSON, status_code=200)

    async def replay() -> AsyncIterator[tuple[str, bytes]]:
        try:
            yield event, data
            async for item in events:
                yield item
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return Stream(_relay_sse(path, req.model, replay()), media_type=SSE, status_code=200,
                  headers={"Cache-Control": "no-cache"})


@post("/v1/responses")
async def responses(request: Request) -> Response[Any]:
    return await _relay(request, "/v1/responses")


@post("/v1/messages")
async def messages(request: Request) -> Response[Any]:
    return await _relay(request, "/v1/messages")


@post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response[Any]:
    return await _relay(request, "/v1/messages/count_tokens")


# Errors --------------------------------------------------------------------------------------


def error_response(path: str, status: int, message: str, code: str | None = None) -> Response[bytes] | None:
    """An error in the shape of the API the path belongs to; None outside /v1."""
    if path.startswith("/v1/messages"):
        return _json(translate.anthropic_error(status, message), status)
    if path == "/v1" or path.startswith("/v1/"):
        return _json(translate.error(status, message, code), status)
    return None


ROUTES = [chat_completions, completions, embeddings, list_models, retrieve_model, responses, messages, count_tokens]
