"""Ollama's embedding routes: /api/embed (batched, normalized, truncated to the context) and the
older /api/embeddings (one prompt)."""

from __future__ import annotations

import asyncio

from litestar import Request, Response, post

from proxy.llama import wire
from proxy.body import INFERENCE_BODY_LIMIT, decode_body
from proxy.gateway import Gateway, gate_of
from proxy.llama.lease import Lease, Timer
from proxy.ollama import schemas, translate
from proxy.ollama.ndjson import json_response
from proxy.rerank import refuse_for_embeddings
from proxy.semantics import KeepAlive, Options
from supervisor.durations import request_keep_alive
from supervisor.errors import bad_request, not_found
from supervisor.names import ModelName
from supervisor.models.model import Model
from supervisor.runners.scheduler import LoadOptions


async def embedding_model(gate: Gateway, text: str) -> Model:
    """The model an embedding (or rerank) request names, its GGUF's header read off the loop;
    unknown is Ollama's 404."""
    if not text:
        raise not_found("model '' not found")
    model = gate.catalog.get(ModelName.parse(text))
    if model is None:
        raise not_found(f'model "{text}" not found, try pulling it first')
    await model.read_info()
    return model


async def load_options(gate: Gateway, model: Model, options: Options | None, keep_alive: KeepAlive) -> LoadOptions:
    """What an embedding (or rerank) request's options start its model's embedding runner with."""
    o = options or Options()
    return LoadOptions(num_ctx=await gate.num_ctx(model, o.num_ctx), keep_alive=request_keep_alive(keep_alive),
                       main_gpu=o.main_gpu, use_mmap=o.use_mmap, use_mlock=o.use_mlock, embedding=True)


async def _embed(
    gate: Gateway, model: Model, inputs: list[str], options: Options | None,
    keep_alive: KeepAlive, truncate: bool, timer: Timer,
) -> tuple[list[list[float]], int]:
    """Raw vectors and the token count of `inputs`. An input that may be longer than the context
    is tokenized first, so that it is cut (truncate) or refused with Ollama's 400, not llama-server's."""
    refuse_for_embeddings(model)
    num_ctx = await gate.num_ctx(model, options.num_ctx if options else None)
    async with gate.inference.lease(model, await load_options(gate, model, options, keep_alive), timer) as lease:
        if not inputs:
            return [], 0
        fitted = await asyncio.gather(*(_fitted(lease, text, num_ctx, truncate) for text in inputs),
                                      return_exceptions=True)
        for item in fitted:
            if isinstance(item, BaseException):
                raise item  # the first input's failure in order, as one by one would find it
        result = await lease.post("/v1/embeddings", wire.EmbeddingsRequest(fitted), wire.EmbeddingsResponse)
    vectors = [item.embedding for item in sorted(result.data, key=lambda i: i.index)]
    return vectors, result.usage.prompt_tokens


# A token is at least one byte of its text; besides those a tokenizer adds a few of its own (BOS,
# EOS, a leading space): an input this much shorter than the context fits without counting.
_SPECIAL_TOKENS = 8


async def _fitted(lease: Lease, text: str, num_ctx: int, truncate: bool) -> str | list[int]:
    """One input as llama-server is sent it: the text where it surely fits, else its tokens."""
    if text and len(text.encode()) + _SPECIAL_TOKENS <= num_ctx:
        return text
    ids = (await lease.post("/tokenize", wire.TokenizeRequest(text, add_special=True), wire.TokenizeResponse)).tokens
    if len(ids) > num_ctx:
        if not truncate:
            raise bad_request("the input length exceeds the context length")
        ids = ids[:num_ctx]
    if not ids:
        raise bad_request("cannot embed an empty input")
    return ids


@post("/api/embed", request_max_body_size=INFERENCE_BODY_LIMIT)
async def embed(request: Request) -> Response[bytes]:
    req = await decode_body(request, schemas.EmbedRequest)
    gate = gate_of(request)
    model = await embedding_model(gate, req.model)
    if (forwarded := await gate.remote.forward(request, model)) is not None:
        return forwarded
    inputs = [req.input] if isinstance(req.input, str) else (req.input or [])
    if inputs == [""]:
        inputs = []  # an empty input only loads the model, as in Ollama
    timer = Timer()
    vectors, count = await _embed(gate, model, inputs, req.options, req.keep_alive, req.truncate, timer)
    return json_response(schemas.EmbedResponse(
        model=req.model,
        embeddings=[translate.normalize(v, req.dimensions) for v in vectors],
        total_duration=timer.total_ns(),
        load_duration=timer.load_ns,
        prompt_eval_count=count,
    ))


@post("/api/embeddings", request_max_body_size=INFERENCE_BODY_LIMIT)
async def embeddings(request: Request) -> Response[bytes]:
    req = await decode_body(request, schemas.EmbeddingsRequest)
    if not req.model:
        raise bad_request("model is required")
    gate = gate_of(request)
    model = await embedding_model(gate, req.model)
    if (forwarded := await gate.remote.forward(request, model)) is not None:
        return forwarded
    inputs = [req.prompt] if req.prompt else []
    vectors, _ = await _embed(gate, model, inputs, req.options, req.keep_alive, True, Timer())
    return json_response(schemas.EmbeddingsResponse(translate.normalize(vectors[0]) if vectors else []))


