"""Ollama's model-management routes: tags, show, ps, create (quantizing too), blobs, copy, delete,
version and status (pull is in pull.py)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, get, head, post, route
from litestar.enums import HttpMethod

from proxy.body import convert, decode_body
from proxy.gateway import Gateway, gate_of
from proxy.ollama import schemas, translate
from proxy.ollama.ndjson import JSON, encode, json_response, log, ndjson, ndjson_stream
from proxy.semantics import Options
from supervisor.errors import LlamagateError, bad_request, not_found
from supervisor.models.gguf import cached_info, read_gguf
from supervisor.models import quantize
from supervisor.models.model import Model
from supervisor.models.remote import Pool, remote_config
from supervisor.models.store import (
    ADAPTER, DISK_FULL, DRAFT, MODEL, PROJECTOR, Layer, Message, ModelConfig, StoredModel, disk_error,
)
from supervisor.names import ModelName
from supervisor.runners.runner import Runner
from supervisor.runtime.binary import find_llama_server
from supervisor.version import OLLAMA_VERSION

# Models ---------------------------------------------------------------------------------------


def details(model: Model) -> schemas.ModelDetails:
    c = model.details
    return schemas.ModelDetails(
        parent_model="",
        format=c.model_format or "gguf",
        family=c.model_family,
        families=c.model_families,
        parameter_size=c.model_type,
        quantization_level=c.file_type,
    )


def _listed(m: Model) -> schemas.ListedModel:
    listed = schemas.ListedModel(name=m.name.display, model=m.name.display, modified_at=m.modified_at.isoformat(),
                                 size=m.size, digest=m.digest, details=details(m))
    try:
        listed.details.context_length, listed.details.embedding_length = m.context_length, m.embedding_length
        listed.capabilities = m.capabilities or None
    except LlamagateError as e:
        # A blob that isn't a readable GGUF fails the model's own requests; the list still
        # shows it, without what only the GGUF can tell.
        log.warning("listing %s without its GGUF's details: %s", m.name.display, e.message)
    if isinstance(m.target, Pool) and m.target.ollama:
        # As Ollama lists a remote model; of several servers, the first (README, Many machines).
        listed.remote_model, listed.remote_host = m.target.name, m.target.endpoints[0].base_url
        if m.target.listed and m.target.listed.capabilities:
            listed.capabilities = m.target.listed.capabilities
    return listed


@route("/api/tags", http_method=[HttpMethod.GET, HttpMethod.HEAD])
async def tags(request: Request) -> Response[bytes]:
    catalog = gate_of(request).catalog
    # In a thread: a model listed for the first time has its GGUF's header read.
    return json_response(schemas.TagsResponse(await asyncio.to_thread(lambda: [_listed(m) for m in catalog.list()])))


@route("/api/version", http_method=[HttpMethod.GET, HttpMethod.HEAD])
async def version() -> Response[bytes]:
    return json_response(schemas.VersionResponse(OLLAMA_VERSION))


@get("/api/status")
async def status(request: Request) -> Response[bytes]:
    """Ollama's cloud switch (`ollama launch` asks): llamagate has no cloud, so it is always off,
    as Ollama's server.json turns it off ("config"); OLLAMA_NO_CLOUD set too makes it "both", as
    Ollama counts the two."""
    source = "both" if gate_of(request).config.no_cloud else "config"
    return json_response(schemas.StatusResponse(schemas.CloudStatus(disabled=True, source=source)))


@route("/", http_method=[HttpMethod.GET, HttpMethod.HEAD])
async def root() -> Response[str]:
    return Response("Ollama is running", media_type="text/plain; charset=utf-8")


# Blobs and create -----------------------------------------------------------------------------


@head("/api/blobs/{digest:str}")
async def blob_exists(request: Request, digest: str) -> Response[None]:
    if not gate_of(request).store.has_blob(digest):
        raise not_found(f'blob "{digest}" not found')
    return Response(None, status_code=200)


@post("/api/blobs/{digest:str}", request_max_body_size=None)
async def blob_upload(request: Request, digest: str) -> Response[None]:
    created = await gate_of(request).store.add_blob_stream(digest, request.stream())
    return Response(None, status_code=201 if created else 200)


def _gguf_layer(gate: Gateway, digest: str, filename: str, default: str) -> Layer:
    """An uploaded file as a layer: a CLIP GGUF is a vision projector, anything else `default`."""
    if not gate.store.has_blob(digest):
        raise bad_request(f"blob {digest} for {filename} not found: upload it with POST /api/blobs/{digest} first")
    path = gate.store.blob_path(digest)
    media_type = PROJECTOR if read_gguf(path).architecture == "clip" else default
    return Layer(media_type, digest, path.stat().st_size)


@dataclass
class _Creation:
    """A create request checked and resolved, before anything is written."""

    name: ModelName
    layer: Layer | None  # the model's GGUF, before quantizing; None for a remote model
    remote: ModelConfig | None  # a remote model's config, naming the server that serves it
    extra: list[Layer]  # projector, adapters
    template: str
    system: str
    params: dict[str, Any]
    messages: list[Message]
    licenses: list[str]
    parsed: bool  # from uploaded files (Ollama reports "parsing GGUF"), not from a model
    described: ModelConfig  # renderer, parser, requires and `info`'s details, for the config blob
    quantize: str = ""  # llama-quantize's type name; "" keeps the GGUF as it is
    source_type: str = ""


# `info` keys that describe a model, as Ollama reads them, and the config field each sets.
_INFO_DETAILS = {"model_family": "model_family", "base_name": "base_name",
                 "quantization_level": "file_type", "parameter_size": "model_type"}


def _described(req: schemas.CreateRequest, base: StoredModel | None) -> ModelConfig:
    """What the request says of the model for its config blob: renderer, parser and requires (a
    base model's where the request names none, as Ollama inherits them) and `info`'s details.
    `info`'s capabilities, context and embedding lengths are refused: llamagate reads them from
    the GGUF, and declaring them would not make llama-server serve them."""
    inherited = base.config if base else ModelConfig()
    described = ModelConfig(renderer=req.renderer or inherited.renderer, parser=req.parser or inherited.parser,
                            requires=req.requires or inherited.requires)
    for key, value in (req.info or {}).items():
        if key in ("capabilities", "context_length", "embedding_length"):
            raise bad_request(f"info field {key!r} is not supported: llamagate reads it from the GGUF")
        if key in _INFO_DETAILS:
            if not isinstance(value, str):
                raise bad_request(f'info field "{key}" must be a string')
            setattr(described, _INFO_DETAILS[key], value)
    return described


def _plan(gate: Gateway, req: schemas.CreateRequest) -> _Creation:
    """Every check of a create, before its first status line: a failure gets a real status
    instead of an error line in a 200 stream."""
    name = ModelName.parse(req.model or req.name)
    for filename in [*(req.files or {}), *(req.adapters or {}), *(req.draft_files or {})]:
        if filename.startswith(("/", "\\")) or ".." in Path(filename).parts:
            raise bad_request("file path must be relative")
    if req.draft_quantize and not req.draft_files:
        raise bad_request("--draft-quantize requires a DRAFT model")
    if req.draft_quantize:
        raise bad_request("draft_quantize is not supported: quantize the draft GGUF before the create")
    quantize_to = quantize.parse_type(req.quantize or req.quantization) if (req.quantize or req.quantization) else ""
    base: StoredModel | None = None
    extra: list[Layer] = []
    layer: Layer | None
    remote: ModelConfig | None = None
    if req.files:
        layers = [_gguf_layer(gate, digest, filename, MODEL) for filename, digest in req.files.items()]
        models = [la for la in layers if la.mediaType == MODEL]
        if len(models) != 1:
            raise bad_request("files must hold exactly one GGUF model (split GGUFs are not supported), "
                              "plus at most a vision projector")
        layer = models[0]
        extra = [la for la in layers if la.mediaType == PROJECTOR]
    elif req.from_ and req.remote_host:
        layer, remote = None, remote_config(gate.config.remotes, req.remote_host, req.from_)
    elif req.from_:
        base = gate.catalog.stored(ModelName.parse(req.from_))
        if base is None:
            raise not_found(f"model '{req.from_}' not found")
        if base.config.remote_host:  # derived from a remote model: served there too
            layer, remote = None, base.config
        else:
            layer = next(la for la in base.manifest.layers if la.mediaType == MODEL)
        extra = [la for la in base.manifest.layers if la.mediaType in (PROJECTOR, ADAPTER, DRAFT)]
    else:
        raise bad_request("neither 'from' or 'files' was specified")
    for filename, digest in (req.adapters or {}).items():
        adapter = _gguf_layer(gate, digest, filename, ADAPTER)
        if adapter.mediaType != ADAPTER or read_gguf(gate.store.blob_path(digest)).metadata.get("general.type") != "adapter":
            raise bad_request(f"{filename}: not a LoRA adapter GGUF")
        extra.append(adapter)
    if req.draft_files:  # llama-server's --model-draft, replacing a base model's draft
        drafts = [_gguf_layer(gate, digest, filename, DRAFT) for filename, digest in req.draft_files.items()]
        if len(drafts) != 1 or drafts[0].mediaType != DRAFT:
            raise bad_request("draft_files must hold exactly one GGUF model")
        extra = [la for la in extra if la.mediaType != DRAFT] + drafts
    if layer is None and req.draft_files:
        raise bad_request("DRAFT cannot be used with remote models")
    if layer is None and quantize_to:
        raise bad_request("quantize needs a GGUF in this store; a remote model is served as its host has it")
    source_type = cached_info(gate.store.blob_path(layer.digest)).file_type if layer else ""
    if quantize_to:
        quantize.check_source(source_type)
        if quantize_to == source_type:
            quantize_to = ""  # already that type, as Ollama skips it
        else:  # the tool is looked for now: a server without one answers before streaming
            quantize.tool_beside(find_llama_server(gate.config.llama_server, gate.config.runtime_dir).path)
    params = base.params if base else {}
    if req.parameters is not None:
        options = convert(req.parameters, Options, "parameters")
        params = {**params, **{k: v for k, v in msgspec.structs.asdict(options).items() if v is not None}}
    if req.messages is not None:
        messages = [Message(m.role, m.content or "") for m in req.messages]
    else:
        messages = base.messages if base else []
    if req.license is not None:
        licenses = req.license if isinstance(req.license, list) else [req.license]
    else:
        licenses = base.licenses if base else []
    return _Creation(
        name=name, layer=layer, remote=remote, extra=extra, params=params, messages=messages, licenses=licenses,
        template=req.template if req.template is not None else (base.template if base else ""),
        system=req.system if req.system is not None else (base.system if base else ""),
        parsed=bool(req.files), described=_described(req, base), quantize=quantize_to,
        source_type=source_type,
    )


# Ollama's digest on quantizing progress lines: the layer it makes has none yet.
_NO_DIGEST = "0" * 19


async def _quantized(gate: Gateway, plan: _Creation) -> AsyncIterator[msgspec.Struct]:
    """The model's GGUF quantized into a new blob, with Ollama's progress lines as each tensor is
    done; `plan.layer` becomes the new layer."""
    tool = quantize.tool_beside(find_llama_server(gate.config.llama_server, gate.config.runtime_dir).path)
    status = f"quantizing {plan.source_type} model to {plan.quantize}"
    total = plan.layer.size
    yield schemas.ProgressResponse(status, _NO_DIGEST, total, 0)
    with gate.store.pending_blob() as tmp:
        progress = quantize.quantize(tool, gate.store.blob_path(plan.layer.digest), tmp, plan.quantize,
                                     gate.config.threads)
        async with aclosing(progress):
            async for done, count in progress:
                yield schemas.ProgressResponse(status, _NO_DIGEST, total, total * done // count)
        yield schemas.StatusLine("verifying conversion")
        plan.layer = await asyncio.to_thread(gate.store.commit_blob_file, tmp, MODEL)


async def _run(gate: Gateway, req: schemas.CreateRequest) -> AsyncIterator[msgspec.Struct]:
    """The create's work, its status lines streamed as each step is done. The blobs it builds on
    are pinned from before its checks to its manifest (a delete meanwhile leaves them); the
    checks, which read GGUF headers, and the writes run in threads, off the event loop."""
    named = [gate.store.blob_path(d) for files in (req.files, req.adapters, req.draft_files)
             for d in (files or {}).values()]
    async with gate.store.pinned(named):
        plan = await asyncio.to_thread(_plan, gate, req)
        used = [*([plan.layer] if plan.layer else []), *plan.extra]
        async with gate.store.pinned(gate.store.blob_path(la.digest) for la in used):
            if gone := [la.digest for la in used if not gate.store.has_blob(la.digest)]:
                raise bad_request(f"blob {gone[0]} was deleted while the create began")
            async for line in _steps(gate, plan):
                yield line


async def _steps(gate: Gateway, plan: _Creation) -> AsyncIterator[msgspec.Struct]:
    if plan.parsed:
        yield schemas.StatusLine("parsing GGUF")
    if plan.quantize:
        async for line in _quantized(gate, plan):
            yield line
    made = plan.layer.digest if plan.quantize else ""  # the store counts it as existing: it is in by now
    lines: list[schemas.StatusLine] = []

    def report(la: Layer, new: bool) -> None:
        fresh = new or la.digest == made
        lines.append(schemas.StatusLine(f"{'creating new' if fresh else 'using existing'} layer {la.digest}"))

    try:
        # A change of the store: under its lock, so that no delete's prune runs in between.
        await gate.store.change(lambda: gate.store.create(
            plan.name, plan.layer, remote=plan.remote, template=plan.template, system=plan.system, params=plan.params,
            messages=plan.messages, license=plan.licenses, extra_layers=plan.extra, described=plan.described,
            on_layer=report,
        ))
    except OSError as e:
        raise disk_error(f"create {plan.name.display}", e) if e.errno in DISK_FULL else e
    for line in lines:
        yield line
    yield schemas.StatusLine("writing manifest")
    yield schemas.StatusLine("success")


@post("/api/create")
async def create(request: Request) -> Response[Any]:
    req = await decode_body(request, schemas.CreateRequest)
    gate = gate_of(request)
    lines = _run(gate, req)
    if req.stream is False:  # one object: the last, or the failure with its status
        async with aclosing(lines):
            async for line in lines:
                last = line
        return json_response(last)
    return ndjson_stream(ndjson(await anext(lines), lines))


# Copy and delete ------------------------------------------------------------------------------


@post("/api/copy")
async def copy(request: Request) -> Response[None]:
    req = await decode_body(request, schemas.CopyRequest)
    gate = gate_of(request)
    try:
        source_name = ModelName.parse(req.source)
    except LlamagateError:
        raise bad_request(f'source "{req.source}" is invalid') from None
    try:
        destination = ModelName.parse(req.destination)
    except LlamagateError:
        raise bad_request(f'destination "{req.destination}" is invalid') from None
    source = gate.catalog.stored(source_name)
    if source is None:
        raise not_found(f'model "{req.source}" not found')
    await gate.store.change(lambda: gate.store.copy(source, destination))
    return Response(None, status_code=200)


@route("/api/delete", http_method=[HttpMethod.DELETE])
async def delete(request: Request) -> Response[None]:
    req = await decode_body(request, schemas.DeleteRequest)
    gate = gate_of(request)
    text = req.model or req.name
    try:
        name = ModelName.parse(text)
    except LlamagateError:
        raise bad_request(f'name "{text}" is invalid') from None
    model = gate.catalog.stored(name)
    if model is None:
        raise not_found(f"model '{text}' not found")
    # Its runner is stopped first (after the requests in flight) unless another name (a copy)
    # still uses the model file, so that no runner outlives its model. A remote model has none.
    if not model.config.remote_host:
        model_layer = model.model_path.name.replace("sha256-", "sha256:")
        if sum(model_layer in (la.digest for la in m.manifest.layers) for m in gate.store.stored()) == 1:
            await gate.scheduler.unload(gate.catalog.require(text))
    pruned = await gate.store.delete(model)
    log.info("deleted %s; pruned %d blob(s)", model.name.display, len(pruned))
    return Response(None, status_code=200)


# Show and ps ----------------------------------------------------------------------------------


@post("/api/show")
async def show(request: Request) -> Response[bytes]:
    req = await decode_body(request, schemas.ShowRequest)
    text = req.model or req.name
    if not text:
        raise bad_request("model is required")
    gate = gate_of(request)
    name = ModelName.parse(text)
    model = gate.catalog.get(name)
    if model is None:
        raise not_found(f"model '{name.display}' not found")
    if (forwarded := await gate.remote.forward(request, model)) is not None:
        return forwarded
    target = model.target
    # Off the loop: a first read of the header, and a verbose one every time (it is not kept).
    info = await (asyncio.to_thread(target.info, verbose=True) if req.verbose else model.read_info())
    projector = await asyncio.to_thread(cached_info, target.projector) if target.projector else None
    system = req.system if req.system is not None else model.system
    params = dict(model.params)
    if "num_ctx" in params:  # shown as the context the server will really use (clients read it)
        params["num_ctx"] = await gate.num_ctx(model, None)

    def answer() -> bytes:
        return encode(schemas.ShowResponse(
            modelfile=translate.modelfile_text(
                model.name.display, target.location, template=model.template, system=system,
                params=model.params, messages=[(m.role, m.content) for m in model.messages],
                licenses=list(model.licenses), projector=str(target.projector or ""),
                adapters=[str(a) for a in target.adapters], draft=str(target.draft or ""),
                renderer=model.details.renderer, parser=model.details.parser,
            ),
            parameters=translate.parameters_text(params),
            template=model.template or translate.shown_template(info.chat_template, model.capabilities),
            license="\n".join(model.licenses),
            details=details(model),
            model_info=translate.model_info(info.metadata, info.parameter_count, req.verbose, model.name.model),
            capabilities=model.capabilities,
            modified_at=model.modified_at.isoformat(),
            system=system,
            messages=[schemas.ShowMessage(m.role, m.content) for m in model.messages] or None,
            projector_info=translate.model_info(projector.metadata, 0, req.verbose) if projector else None,
            thinking=translate.thinking(info.chat_template, model.capabilities),
            tensors=translate.tensors(info.tensors) if req.verbose else None,
            requires=model.details.requires,
        ))

    # A verbose answer holds every array of the header (a big vocabulary's 150k strings and
    # more): built in a thread, whose Python work then shares the interpreter with the loop.
    body = await asyncio.to_thread(answer) if req.verbose else answer()
    return Response(body, status_code=200, media_type=JSON)


# `expires_at` of a model kept forever: Ollama's now + max duration (~292 years).
_FOREVER = timedelta(microseconds=2**63 // 1000)


def _expires(runner: Runner, now: datetime) -> datetime:
    if runner.keep_alive == math.inf:
        return now + _FOREVER
    if runner.expires_at == math.inf:  # busy: an estimate, as Ollama gives
        return now + timedelta(seconds=runner.keep_alive)
    return datetime.fromtimestamp(runner.expires_at).astimezone()


def _sizes(runner: Runner, model: Model) -> tuple[int, int]:
    """(size, size_vram) of one runner: where its load log put its buffers, or, loading, where
    the scheduler predicts it will on the GPUs; on the CPU with neither, what its process holds
    or the file, whichever is more."""
    footprint = runner.footprint
    if footprint is not None and (runner.placement or footprint.vram):
        return footprint.size, footprint.vram_total
    return max(runner.resident_bytes, model.size), 0


@get("/api/ps")
async def ps(request: Request) -> Response[bytes]:
    """One entry per model, however many runners serve it (chat and embeddings are two): its
    size is theirs summed, and it expires when the last of them does."""
    now = datetime.now().astimezone()
    scheduler = gate_of(request).scheduler
    models = []
    for model, runners in scheduler.loaded():
        spec = next((r.spec for r in runners if r.spec), None)
        since = min((r.loading_since for r in runners if r.loading_since is not None), default=None)
        sizes = [_sizes(r, model) for r in runners]
        models.append(schemas.RunningModel(
            name=model.name.display,
            model=model.name.display,
            size=sum(size for size, _ in sizes),
            digest=model.digest,
            details=details(model),
            expires_at=max(_expires(r, now) for r in runners).isoformat(),
            size_vram=sum(vram for _, vram in sizes),
            context_length=spec.num_ctx if spec else 0,
            queued=sum(scheduler.queued(r) for r in runners),
            loading=since is not None,
            loading_since=datetime.fromtimestamp(since).astimezone().isoformat() if since is not None else None,
            load_seconds=round(now.timestamp() - since, 1) if since is not None else None,
        ))
    models.sort(key=lambda m: m.expires_at, reverse=True)
    return json_response(schemas.PsResponse(models))
