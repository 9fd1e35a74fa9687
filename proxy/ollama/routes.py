"""Ollama's native routes: decode the request, resolve the model, stream the translated answer."""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
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
from supervisor.capabilities import capabilities
from supervisor.durations import parse_keep_alive
from supervisor.errors import LlamagateError, bad_request, not_found
from supervisor.gguf import cached_info, read_gguf
from supervisor.names import ModelName
from supervisor.runner import Runner
from supervisor.scheduler import LoadOptions
from supervisor.store import ADAPTER, MODEL, PROJECTOR, Layer, Message, StoredModel
from supervisor.upstreams import RemoteModel

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


def _load(options: schemas.Options | None, num_ctx: int, keep_alive: float | None) -> LoadOptions:
    o = options or schemas.Options()
    return LoadOptions(num_ctx=num_ctx, keep_alive=keep_alive, num_gpu=o.num_gpu, num_thread=o.num_thread,
                       num_batch=o.num_batch)


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


def _capabilities(model: StoredModel | RemoteModel) -> list[str]:
    if isinstance(model, RemoteModel):
        return model.capabilities
    return capabilities(cached_info(model.model_path), projector=model.projector_path is not None)


def _add_tool_call(calls: dict[int, tuple[str, str, list[str]]], piece: llama.ToolCallDelta) -> None:
    call_id, name, parts = calls.get(piece.index, ("", "", []))
    if piece.function.arguments:
        parts.append(piece.function.arguments)
    # Ollama's own ids look like this when the runner gives none.
    call_id = piece.id or call_id or "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(8))
    calls[piece.index] = (call_id, piece.function.name or name, parts)


_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass
class _Ending:
    """How llama-server ended a generation, filled in as its stream goes by; tool calls arrive
    in pieces ({index: (id, name, argument pieces)}) and are whole only at the end."""

    reason: str | None = None
    timings: llama.Timings | None = None
    calls: dict[int, tuple[str, str, list[str]]] = field(default_factory=dict)

    def tool_calls(self) -> list[schemas.OutToolCall]:
        return translate.tool_calls(self.calls, truncated=self.reason in ("length", "limit"))


@dataclass
class _Piece:
    content: str
    thinking: str = ""
    logprobs: list[schemas.Logprob] | None = None


async def _pieces(
    gate: Gateway, runner: Runner, body: llama.ChatRequest | llama.CompletionRequest | llama.InfillRequest,
    ending: _Ending,
) -> AsyncIterator[_Piece]:
    """What llama-server generates, from /completion, /infill or /v1/chat/completions."""
    if isinstance(body, llama.ChatRequest):
        async for chunk in gate.upstream.stream(runner, "/v1/chat/completions", body, llama.ChatChunk):
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
    path = "/infill" if isinstance(body, llama.InfillRequest) else "/completion"
    async for c in gate.upstream.stream(runner, path, body, llama.CompletionChunk):
        ending.timings = c.timings or ending.timings
        ending.reason = c.stop_type or ending.reason
        logprobs = translate.logprobs(c.completion_probabilities)
        if c.content or logprobs:
            yield _Piece(c.content, "", logprobs)


async def _chat_chunks(
    gate: Gateway, name: str, model: StoredModel, load: LoadOptions, body: llama.ChatRequest
) -> AsyncIterator[schemas.ChatChunk]:
    timer, ending = Timer(), _Ending()
    async with gate.inference.runner(model, load, timer) as runner:
        async for p in _pieces(gate, runner, body, ending):
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


async def _load_or_unload(gate: Gateway, model: StoredModel, keep_alive: float | None, done: Callable[[str], Any]) -> Response[Any]:
    """An empty prompt loads the model; with keep_alive 0 it unloads it (Ollama's `stop`)."""
    if keep_alive == 0:
        await gate.scheduler.unload(model)
        return _json(done("unload"))
    num_ctx = gate.scheduler.num_ctx(model, None)
    await gate.inference.load(model, LoadOptions(num_ctx=num_ctx, keep_alive=keep_alive))
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
    body = translate.chat_request(req, model_defaults(model), num_ctx, req.model, _capabilities(model))
    chunks = _chat_chunks(gate, req.model, model, _load(req.options, num_ctx, keep_alive), body)
    return await _respond(chunks, req.stream is not False, _merge_chat)


# Generate -------------------------------------------------------------------------------------


async def _generate_chunks(
    gate: Gateway, req: schemas.GenerateRequest, model: StoredModel, load: LoadOptions,
    body: llama.ChatRequest | llama.CompletionRequest | llama.InfillRequest,
) -> AsyncIterator[schemas.GenerateChunk]:
    """The answer, then a final chunk with the `context` tokens (prompt + answer) that a later
    request can send back, except for raw prompts and infill, as Ollama does."""
    name = req.model
    timer, ending = Timer(), _Ending()
    response: list[str] = []
    async with gate.inference.runner(model, load, timer) as runner:
        prompt = body.prompt if isinstance(body, llama.CompletionRequest) and not req.raw else None
        if isinstance(body, llama.ChatRequest) and not req.images:
            applied = await gate.upstream.post(
                runner, "/apply-template", llama.ApplyTemplateRequest(body.messages, body.chat_template_kwargs),
                llama.ApplyTemplateResponse,
            )
            prompt = applied.prompt
            if req.context:
                body = translate.with_context(body, prompt, req.context)
        async for p in _pieces(gate, runner, body, ending):
            response.append(p.content)
            yield schemas.GenerateChunk(model=name, created_at=now_rfc3339(), response=p.content,
                                        thinking=p.thinking, done=False, logprobs=p.logprobs)
        context = None
        if isinstance(prompt, str):
            tokens = await gate.upstream.post(runner, "/tokenize", llama.TokenizeRequest(prompt + "".join(response)),
                                              llama.TokenizeResponse)
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
    gate = _gate(request)
    model = gate.store.require(req.model)
    keep_alive = _keep_alive(req.keep_alive)
    if not req.prompt and not req.suffix:
        return await _load_or_unload(
            gate, model, keep_alive,
            lambda reason: schemas.GenerateChunk(model=req.model, created_at=now_rfc3339(), response="", done=True, done_reason=reason),
        )
    num_ctx = gate.scheduler.num_ctx(model, req.options.num_ctx if req.options else None)
    body = translate.generate_request(req, model_defaults(model), num_ctx, req.model, _capabilities(model))
    chunks = _generate_chunks(gate, req, model, _load(req.options, num_ctx, keep_alive), body)
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


def _gguf_layer(gate: Gateway, digest: str, filename: str, default: str) -> Layer:
    """An uploaded file as a layer: a CLIP GGUF is a vision projector, anything else `default`."""
    if not gate.store.has_blob(digest):
        raise bad_request(f"blob {digest} for {filename} not found: upload it with POST /api/blobs/{digest} first")
    path = gate.store.blob_path(digest)
    media_type = PROJECTOR if read_gguf(path).architecture == "clip" else default
    return Layer(media_type, digest, path.stat().st_size)


def _create(gate: Gateway, req: schemas.CreateRequest) -> list[schemas.StatusLine]:
    """Write the model, then report it in Ollama's status lines: every failure comes before
    the first line, so it gets a real status instead of an error line in a 200 stream."""
    name = ModelName.parse(req.model or req.name)
    if req.quantize:
        raise bad_request("quantize is not supported: import an already quantized GGUF")
    for filename in [*(req.files or {}), *(req.adapters or {})]:
        if filename.startswith(("/", "\\")) or ".." in Path(filename).parts:
            raise bad_request("file path must be relative")
    lines = []
    base: StoredModel | None = None
    extra: list[Layer] = []
    if req.files:
        lines.append(schemas.StatusLine("parsing GGUF"))
        layers = [_gguf_layer(gate, digest, filename, MODEL) for filename, digest in req.files.items()]
        models = [la for la in layers if la.mediaType == MODEL]
        if len(models) != 1:
            raise bad_request("files must hold exactly one GGUF model (split GGUFs are not supported), "
                              "plus at most a vision projector")
        layer = models[0]
        extra = [la for la in layers if la.mediaType == PROJECTOR]
    elif req.from_:
        base = gate.store.require(req.from_)
        layer = next(la for la in base.manifest.layers if la.mediaType == MODEL)
        extra = [la for la in base.manifest.layers if la.mediaType in (PROJECTOR, ADAPTER)]
    else:
        raise bad_request("neither 'from' or 'files' was specified")
    for filename, digest in (req.adapters or {}).items():
        adapter = _gguf_layer(gate, digest, filename, ADAPTER)
        if adapter.mediaType != ADAPTER or read_gguf(gate.store.blob_path(digest)).metadata.get("general.type") != "adapter":
            raise bad_request(f"{filename}: not a LoRA adapter GGUF")
        extra.append(adapter)
    params = base.params if base else {}
    if req.parameters is not None:
        options = convert(req.parameters, schemas.Options, "parameters")
        params = {**params, **{k: v for k, v in msgspec.structs.asdict(options).items() if v is not None}}
    if req.messages is not None:
        messages = [Message(m.role, m.content or "") for m in req.messages]
    else:
        messages = base.messages if base else []
    if req.license is not None:
        licenses = req.license if isinstance(req.license, list) else [req.license]
    else:
        licenses = base.licenses if base else []

    def report(la: Layer, new: bool) -> None:
        lines.append(schemas.StatusLine(f"{'creating new' if new else 'using existing'} layer {la.digest}"))

    gate.store.create(
        name,
        layer,
        template=req.template if req.template is not None else (base.template if base else ""),
        system=req.system if req.system is not None else (base.system if base else ""),
        params=params,
        messages=messages,
        license=licenses,
        extra_layers=extra,
        on_layer=report,
    )
    return [*lines, schemas.StatusLine("writing manifest"), schemas.StatusLine("success")]


@post("/api/create")
async def create(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.CreateRequest)
    lines = _create(_gate(request), req)
    if req.stream is False:
        return _json(lines[-1])
    return Stream((_encode(line) + b"\n" for line in lines), status_code=200, media_type=NDJSON)


# Copy and delete ------------------------------------------------------------------------------


@post("/api/copy")
async def copy(request: Request) -> Response[None]:
    req = await decode_body(request, schemas.CopyRequest)
    gate = _gate(request)
    try:
        source_name = ModelName.parse(req.source)
    except LlamagateError:
        raise bad_request(f'source "{req.source}" is invalid') from None
    try:
        destination = ModelName.parse(req.destination)
    except LlamagateError:
        raise bad_request(f'destination "{req.destination}" is invalid') from None
    source = gate.store.get(source_name)
    if source is None:
        raise not_found(f'model "{req.source}" not found')
    gate.store.copy(source, destination)
    return Response(None, status_code=200)


@route("/api/delete", http_method=[HttpMethod.DELETE])
async def delete(request: Request) -> Response[None]:
    req = await decode_body(request, schemas.DeleteRequest)
    gate = _gate(request)
    text = req.model or req.name
    try:
        name = ModelName.parse(text)
    except LlamagateError:
        raise bad_request(f'name "{text}" is invalid') from None
    model = gate.store.get(name)
    if model is None:
        raise not_found(f"model '{text}' not found")
    # Its runner is stopped first (after the requests in flight) unless another name (a copy)
    # still uses the model file, so that no runner outlives its model.
    model_layer = model.model_path.name.replace("sha256-", "sha256:")
    if sum(model_layer in (la.digest for la in m.manifest.layers) for m in gate.store.stored()) == 1:
        await gate.scheduler.unload(model)
    pruned = gate.store.delete(model)
    log.info("deleted %s; pruned %d blob(s)", model.name.display, len(pruned))
    return Response(None, status_code=200)


# Show and ps ----------------------------------------------------------------------------------


@post("/api/show")
async def show(request: Request) -> Response[bytes]:
    req = await decode_body(request, schemas.ShowRequest)
    text = req.model or req.name
    if not text:
        raise bad_request("model is required")
    name = ModelName.parse(text)
    model = _gate(request).store.get(name)
    if model is None:
        raise not_found(f"model '{name.display}' not found")
    if isinstance(model, RemoteModel):
        return _json(_show_remote(model))
    info = read_gguf(model.model_path, max_array=1 << 62) if req.verbose else cached_info(model.model_path)
    projector = model.projector_path
    system = req.system if req.system is not None else model.system
    caps = capabilities(info, projector=projector is not None)
    params = dict(model.params)
    if "num_ctx" in params:  # shown as the context the server will really use (clients read it)
        params["num_ctx"] = _gate(request).scheduler.num_ctx(model, None)
    return _json(schemas.ShowResponse(
        modelfile=translate.modelfile_text(
            model.name.display, str(model.model_path), template=model.template, system=system,
            params=model.params, messages=[(m.role, m.content) for m in model.messages],
            licenses=model.licenses, projector=str(projector or ""), adapters=[str(a) for a in model.adapter_paths],
        ),
        parameters=translate.parameters_text(params),
        template=model.template or translate.shown_template(info.chat_template, caps),
        license="\n".join(model.licenses),
        details=details(model),
        model_info=translate.model_info(info.metadata, info.parameter_count, req.verbose, model.name.model),
        capabilities=caps,
        modified_at=model.modified_at.isoformat(),
        system=system,
        messages=[schemas.ShowMessage(m.role, m.content) for m in model.messages] or None,
        projector_info=translate.model_info(cached_info(projector).metadata, 0, req.verbose) if projector else None,
    ))


def _show_remote(model: RemoteModel) -> schemas.ShowResponse:
    """What an upstream's /props and /v1/models tell of its model (there is no GGUF here)."""
    caps = model.capabilities
    urls = ", ".join(e.base_url for e in model.pool.endpoints)
    return schemas.ShowResponse(
        modelfile=f"# {model.name.display}: served by the llama-server(s) at {urls}\n",
        parameters="",
        template=translate.shown_template(model.chat_template, caps),
        license="",
        details=details(model),
        model_info=model.model_info,
        capabilities=caps,
        modified_at=model.modified_at.isoformat(),
    )


# `expires_at` of a model kept forever: Ollama's now + max duration (~292 years).
_FOREVER = timedelta(microseconds=2**63 // 1000)


def _resident_bytes(pid: int | None) -> int:
    """What the runner holds in memory (weights touched, KV cache, buffers), from /proc."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@get("/api/ps")
async def ps(request: Request) -> Response[bytes]:
    now = datetime.now().astimezone()
    models = []
    for model, runner in _gate(request).scheduler.loaded():
        if runner.keep_alive == math.inf:
            expires = now + _FOREVER
        elif runner.expires_at == math.inf:  # busy: an estimate, as Ollama gives
            expires = now + timedelta(seconds=runner.keep_alive)
        else:
            expires = datetime.fromtimestamp(runner.expires_at).astimezone()
        models.append(schemas.RunningModel(
            name=model.name.display,
            model=model.name.display,
            size=max(_resident_bytes(runner.pid), model.model_path.stat().st_size),
            digest=model.digest,
            details=details(model),
            expires_at=expires.isoformat(),
            size_vram=0,  # CPU only
            context_length=runner.spec.num_ctx if runner.spec else 0,
        ))
    models.sort(key=lambda m: m.expires_at, reverse=True)
    return _json(schemas.PsResponse(models))


# Embeddings -----------------------------------------------------------------------------------


def _embedding_model(gate: Gateway, text: str) -> StoredModel:
    model = gate.store.get(ModelName.parse(text))
    if model is None:
        raise not_found(f'model "{text}" not found, try pulling it first')
    return model


async def _embed(
    gate: Gateway, model: StoredModel, inputs: list[str], options: schemas.Options | None,
    keep_alive: float | None, truncate: bool, timer: Timer,
) -> tuple[list[list[float]], int]:
    """Raw vectors and the token count of `inputs`. Each input is tokenized first, so that one
    longer than the context is cut (truncate) or refused with Ollama's 400, not llama-server's."""
    num_ctx = gate.scheduler.num_ctx(model, options.num_ctx if options else None)
    load = LoadOptions(num_ctx=num_ctx, keep_alive=keep_alive, embedding=True)
    async with gate.inference.runner(model, load, timer) as runner:
        if not inputs:
            return [], 0
        tokens = []
        for text in inputs:
            ids = (await gate.upstream.post(runner, "/tokenize", llama.TokenizeRequest(text, add_special=True),
                                            llama.TokenizeResponse)).tokens
            if len(ids) > num_ctx:
                if not truncate:
                    raise bad_request("the input length exceeds the context length")
                ids = ids[:num_ctx]
            if not ids:
                raise bad_request("cannot embed an empty input")
            tokens.append(ids)
        result = await gate.upstream.post(runner, "/v1/embeddings", llama.EmbeddingsRequest(tokens),
                                          llama.EmbeddingsResponse)
    vectors = [item.embedding for item in sorted(result.data, key=lambda i: i.index)]
    return vectors, sum(len(t) for t in tokens)


@post("/api/embed")
async def embed(request: Request) -> Response[bytes]:
    req = await decode_body(request, schemas.EmbedRequest)
    if not req.model:
        raise not_found("model '' not found")
    gate = _gate(request)
    model = _embedding_model(gate, req.model)
    inputs = [req.input] if isinstance(req.input, str) else (req.input or [])
    if inputs == [""]:
        inputs = []  # an empty input only loads the model, as in Ollama
    timer = Timer()
    vectors, count = await _embed(gate, model, inputs, req.options, _keep_alive(req.keep_alive), req.truncate, timer)
    return _json(schemas.EmbedResponse(
        model=req.model,
        embeddings=[translate.normalize(v, req.dimensions) for v in vectors],
        total_duration=timer.total_ns(),
        load_duration=timer.load_ns,
        prompt_eval_count=count,
    ))


@post("/api/embeddings")
async def embeddings(request: Request) -> Response[bytes]:
    req = await decode_body(request, schemas.EmbeddingsRequest)
    if not req.model:
        raise bad_request("model is required")
    gate = _gate(request)
    model = _embedding_model(gate, req.model)
    inputs = [req.prompt] if req.prompt else []
    vectors, _ = await _embed(gate, model, inputs, req.options, _keep_alive(req.keep_alive), True, Timer())
    return _json(schemas.EmbeddingsResponse(translate.normalize(vectors[0]) if vectors else []))


# Pull -----------------------------------------------------------------------------------------


async def _pull_chunks(gate: Gateway, req: schemas.PullRequest) -> AsyncIterator[schemas.ProgressResponse]:
    async for p in gate.puller.pull(req.model or req.name, req.insecure):
        yield schemas.ProgressResponse(p.status, p.digest, p.total, p.completed)


async def _last(chunks: AsyncIterator[schemas.ProgressResponse]) -> schemas.ProgressResponse:
    async for c in chunks:
        pass
    return c


@post("/api/pull")
async def pull(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.PullRequest)
    return await _respond(_pull_chunks(_gate(request), req), req.stream is not False, _last)


ROUTES = [root, version, tags, chat, generate, blob_exists, blob_upload, create, copy, delete, show, ps, embed,
          embeddings, pull]
