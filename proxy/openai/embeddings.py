"""OpenAI's /v1/embeddings."""

from __future__ import annotations

from litestar import Request, Response, post

from proxy.llama import wire
from proxy.body import INFERENCE_BODY_LIMIT, decode_body
from proxy.openai import schemas, translate
from proxy.gateway import gate_of
from proxy.openai.models import load_options, require_model
from proxy.openai.sse import json_answer
from proxy.rerank import refuse_for_embeddings


@post("/v1/embeddings", request_max_body_size=INFERENCE_BODY_LIMIT)
async def embeddings(request: Request) -> Response[bytes]:
    req = await decode_body(request, schemas.EmbeddingRequest)
    gate = gate_of(request)
    model = await require_model(gate, req.model)
    if (forwarded := await gate.remote.forward(request, model)) is not None:
        return forwarded
    refuse_for_embeddings(model)
    body = wire.EmbeddingsRequest(translate.embedding_input(req))
    load = await load_options(gate, model, req, embedding=True)
    result = await gate.inference.call(model, load, "/v1/embeddings", body, wire.EmbeddingsResponse)
    return json_answer(schemas.EmbeddingList(
        data=[
            schemas.Embedding(d.index, translate.embedding(d.embedding, req.dimensions, req.encoding_format))
            for d in result.data
        ],
        model=req.model,
        usage=schemas.EmbeddingUsage(result.usage.prompt_tokens, result.usage.prompt_tokens),
    ))
