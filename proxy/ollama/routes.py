"""Ollama's native routes: decode the request, resolve the model, stream the translated answer."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response, get, head, post, route
from litestar.enums import HttpMethod
from litestar.response import Stream

from proxy import llama
from proxy.body import convert, decode_body
from proxy.gateway import Gateway, model_defaults
from proxy.inference import Timer
from proxy.ollama import schemas, translate
from supervisor.durations import parse_keep_alive
from supervisor.errors import LlamagateError, bad_request, not_found
from supervisor.names import ModelName
from supervisor.scheduler import LoadOptions
from supervisor.store import MODEL, Layer, Message, StoredModel

log = logging.getLogger("llamagate.ollama")

OLLAMA_VERSION = "0.12.11"
NDJSON = "application/x-ndjson"
JSON = "application/json; charset=utf-8"

_encode = msgspec.json.Encoder().encode


def _gate(request: Request) -> Gateway:
    return request.app.state.gate


def now_rfc3339() -> str:
    """UTC with nanoseconds and a Z, as Go's RFC3339Nano writes `created_at`."""
    ns = time.time_ns()
    frac = f"{ns % 1_000_000_000:09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + (f".{frac}" if frac else "") + "Z"


def _json(obj: msgspec.Struct, status: int = 200) -> Response[bytes]:
    return Response(_encode(obj), status_code=status, media_type=JSON)


def _keep_alive(value: schemas.KeepAlive) -> float | None:
    return None if value is None else parse_keep_alive(value)


async def _ndjson(first: msgspec.Struct, rest: AsyncIterator[msgspec.Struct]) -> AsyncIterator[bytes]:
    try:
        yield _encode(first) + b"\n"
        async for chunk in rest:
            yield _encode(chunk) + b"\n"
    except LlamagateError as e:
        yield _encode(schemas.ErrorResponse(e.message)) + b"\n"
    except Exception:
        log.exception("stream failed")
        yield _encode(schemas.ErrorResponse("internal error while streaming the answer")) + b"\n"
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


async def _respond(
    chunks: AsyncIterator[msgspec.Struct],
    stream: bool,
    merge: Callable[[AsyncIterator[Any]], Awaitable[msgspec.Struct]],
) -> Response[Any]:
    """One object, or NDJSON whose headers wait for the first chunk, so that a failure before
    the first token (a load error, a bad request upstream) still gets its real status."""
    if not stream:
        return _json(await merge(chunks))
    first = await anext(chunks)
    return Stream(_ndjson(first, chunks), status_code=200, media_type=NDJSON)


# Chat -----------------------------------------------------------------------------------------


@dataclass
class _Ending:
    """How llama-server ended a generation, filled in as its stream goes by."""

    reason: str | None = None
    timings: llama.Timings | None = None


async def _pieces(
    gate: Gateway, model: StoredModel, load: LoadOptions,
    body: llama.ChatRequest | llama.CompletionRequest, timer: Timer, ending: _Ending,
) -> AsyncIterator[tuple[str, str]]:
    """(content, thinking) as llama-server generates them, from /completion or /v1/chat/completions."""
    if isinstance(body, llama.CompletionRequest):
        async for c in gate.inference.stream(model, load, "/completion", body, llama.CompletionChunk, timer):
            ending.timings = c.timings or ending.timings
            ending.reason = c.stop_type or ending.reason
            if c.content:
                yield c.content, ""
        return
    async for chunk in gate.inference.stream(model, load, "/v1/chat/completions", body, llama.ChatChunk, timer):
        ending.timings = chunk.timings or ending.timings
        for choice in chunk.choices:
            ending.reason = choice.finish_reason or ending.reason
            d = choice.delta
            if d.content or d.reasoning_content:
                yield d.content or "", d.reasoning_content or ""


async def _chat_chunks(
    gate: Gateway, name: str, model: StoredModel, load: LoadOptions, body: llama.ChatRequest
) -> AsyncIterator[schemas.ChatChunk]:
    timer, ending = Timer(), _Ending()
    async for content, thinking in _pieces(gate, model, load, body, timer, ending):
        yield schemas.ChatChunk(name, now_rfc3339(), schemas.OutMessage("assistant", content, thinking), False)
    yield schemas.ChatChunk(
        name,
        now_rfc3339(),
        schemas.OutMessage("assistant", ""),
        True,
        translate.done_reason(ending.reason),
        **translate.metrics(ending.timings, timer.total_ns(), timer.load_ns),
    )


async def _merge_chat(chunks: AsyncIterator[schemas.ChatChunk]) -> schemas.ChatChunk:
    content, thinking = [], []
    async for c in chunks:
        content.append(c.message.content)
        thinking.append(c.message.thinking)
    c.message = schemas.OutMessage("assistant", "".join(content), "".join(thinking))
    return c


async def _load_or_unload(gate: Gateway, model: StoredModel, keep_alive: float | None, done: Callable[[str], Any]) -> Response[Any]:
    """An empty prompt loads the model; with keep_alive 0 it unloads it (Ollama's `stop`)."""
    if keep_alive == 0:
        await gate.scheduler.unload(model)
        return _json(done("unload"))
    num_ctx = gate.scheduler.num_ctx(model, None)
    await gate.inference.load(model, LoadOptions(num_ctx, keep_alive))
    return _json(done("load"))


@post("/api/chat")
async def chat(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.ChatRequest)
    if not req.model:
        raise bad_request("model is required")
    gate = _gate(request)
    model = gate.store.require(req.model)
    keep_alive = _keep_alive(req.keep_alive)
    if not req.messages:
        return await _load_or_unload(
            gate, model, keep_alive,
            lambda reason: schemas.ChatChunk(req.model, now_rfc3339(), schemas.OutMessage("assistant", ""), True, reason),
        )
    num_ctx = gate.scheduler.num_ctx(model, req.options.num_ctx if req.options else None)
    body = translate.chat_request(req, model_defaults(model), num_ctx)
    chunks = _chat_chunks(gate, req.model, model, LoadOptions(num_ctx, keep_alive), body)
    return await _respond(chunks, req.stream is not False, _merge_chat)


# Generate -------------------------------------------------------------------------------------


async def _generate_chunks(
    gate: Gateway, name: str, model: StoredModel, load: LoadOptions,
    body: llama.ChatRequest | llama.CompletionRequest,
) -> AsyncIterator[schemas.GenerateChunk]:
    timer, ending = Timer(), _Ending()
    async for content, thinking in _pieces(gate, model, load, body, timer, ending):
        yield schemas.GenerateChunk(
            model=name, created_at=now_rfc3339(), response=content, thinking=thinking, done=False
        )
    yield schemas.GenerateChunk(
        model=name,
        created_at=now_rfc3339(),
        response="",
        done=True,
        done_reason=translate.done_reason(ending.reason),
        **translate.metrics(ending.timings, timer.total_ns(), timer.load_ns),
    )


async def _merge_generate(chunks: AsyncIterator[schemas.GenerateChunk]) -> schemas.GenerateChunk:
    response, thinking = [], []
    async for c in chunks:
        response.append(c.response)
        thinking.append(c.thinking)
    c.response, c.thinking = "".join(response), "".join(thinking)
    return c


@post("/api/generate")
async def generate(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.GenerateRequest)
    if not req.model:
        raise not_found("model '' not found")
    gate = _gate(request)
    model = gate.store.require(req.model)
    keep_alive = _keep_alive(req.keep_alive)
    if not req.prompt:
        return await _load_or_unload(
            gate, model, keep_alive,
            lambda reason: schemas.GenerateChunk(model=req.model, created_at=now_rfc3339(), response="", done=True, done_reason=reason),
        )
    num_ctx = gate.scheduler.num_ctx(model, req.options.num_ctx if req.options else None)
    body = translate.generate_request(req, model_defaults(model), num_ctx)
    chunks = _generate_chunks(gate, req.model, model, LoadOptions(num_ctx, keep_alive), body)
    return await _respond(chunks, req.stream is not False, _merge_generate)


# Models ---------------------------------------------------------------------------------------


def details(model: StoredModel) -> schemas.ModelDetails:
    c = model.config
    return schemas.ModelDetails(
        parent_model="",
        format=c.model_format or "gguf",
        family=c.model_family,
        families=c.model_families,
        parameter_size=c.model_type,
        quantization_level=c.file_type,
    )


@route("/api/tags", http_method=[HttpMethod.GET, HttpMethod.HEAD])
async def tags(request: Request) -> Response[bytes]:
    models = [
        schemas.ListedModel(
            name=m.name.display,
            model=m.name.display,
            modified_at=m.modified_at.isoformat(),
            size=m.size,
            digest=m.digest,
            details=details(m),
        )
        for m in _gate(request).store.list()
    ]
    return _json(schemas.TagsResponse(models))


@route("/api/version", http_method=[HttpMethod.GET, HttpMethod.HEAD])
async def version() -> Response[bytes]:
    return _json(schemas.VersionResponse(OLLAMA_VERSION))


@route("/", http_method=[HttpMethod.GET, HttpMethod.HEAD])
async def root() -> Response[str]:
    return Response("Ollama is running", media_type="text/plain; charset=utf-8")


# Blobs and create -----------------------------------------------------------------------------


@head("/api/blobs/{digest:str}")
async def blob_exists(request: Request, digest: str) -> Response[None]:
    if not _gate(request).store.has_blob(digest):
        raise not_found(f'blob "{digest}" not found')
    return Response(None, status_code=200)


@post("/api/blobs/{digest:str}", request_max_body_size=None)
async def blob_upload(request: Request, digest: str) -> Response[None]:
    created = await _gate(request).store.add_blob_stream(digest, request.stream())
    return Response(None, status_code=201 if created else 200)


def _create(gate: Gateway, req: schemas.CreateRequest) -> list[schemas.StatusLine]:
    """Write the model, then report it in Ollama's status lines: every failure comes before
    the first line, so it gets a real status instead of an error line in a 200 stream."""
    name = ModelName.parse(req.model or req.name)
    if req.quantize:
        raise bad_request("quantize is not supported: import an already quantized GGUF")
    base: StoredModel | None = None
    if req.files:
        if len(req.files) != 1:
            raise bad_request("exactly one GGUF file is supported in files")
        (digest,) = req.files.values()
        if not gate.store.has_blob(digest):
            raise bad_request(f"blob {digest} not found: upload it with POST /api/blobs/{digest} first")
        layer = Layer(MODEL, digest, gate.store.blob_path(digest).stat().st_size)
    elif req.from_:
        base = gate.store.require(req.from_)
        layer = next(la for la in base.manifest.layers if la.mediaType == MODEL)
    else:
        raise bad_request("neither 'from' or 'files' was specified")
    params = base.params if base else {}
    if req.parameters is not None:
        options = convert(req.parameters, schemas.Options, "parameters")
        params = {**params, **{k: v for k, v in msgspec.structs.asdict(options).items() if v is not None}}
    if req.messages is not None:
        messages = [Message(m.role, m.content or "") for m in req.messages]
    else:
        messages = base.messages if base else []
    gate.store.create(
        name,
        layer,
        template=req.template if req.template is not None else (base.template if base else ""),
        system=req.system if req.system is not None else (base.system if base else ""),
        params=params,
        messages=messages,
        license="\n".join(req.license) if isinstance(req.license, list) else (req.license or ""),
    )
    return [
        schemas.StatusLine(f"using existing layer {layer.digest}"),
        schemas.StatusLine("writing manifest"),
        schemas.StatusLine("success"),
    ]


@post("/api/create")
async def create(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.CreateRequest)
    lines = _create(_gate(request), req)
    if req.stream is False:
        return _json(lines[-1])
    return Stream((_encode(line) + b"\n" for line in lines), status_code=200, media_type=NDJSON)


ROUTES = [root, version, tags, chat, generate, blob_exists, blob_upload, create]
