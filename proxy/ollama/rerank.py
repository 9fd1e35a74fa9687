"""/api/rerank (ours: Ollama has none): documents scored against a query by a reranker model."""

from __future__ import annotations

from litestar import Request, Response, post

from proxy.body import INFERENCE_BODY_LIMIT, decode_body
from proxy.gateway import gate_of
from proxy.llama.lease import Timer
from proxy.ollama import schemas
from proxy.ollama.embed import embedding_model, load_options
from proxy.ollama.ndjson import json_response
from proxy.rerank import rerank as score


@post("/api/rerank", request_max_body_size=INFERENCE_BODY_LIMIT)
async def rerank(request: Request) -> Response[bytes]:
    req = await decode_body(request, schemas.RerankRequest)
    gate = gate_of(request)
    model = await embedding_model(gate, req.model)
    documents = req.documents or []
    timer = Timer()
    load = await load_options(gate, model, req.options, req.keep_alive)
    result = await score(gate, model, load, req.query, documents, req.top_n, timer)
    return json_response(schemas.RerankResponse(
        model=req.model,
        results=[schemas.RerankResult(r.index, documents[r.index], r.relevance_score) for r in result.results],
        total_duration=timer.total_ns(),
        load_duration=timer.load_ns,
        prompt_eval_count=result.usage.prompt_tokens,
    ))
