"""/v1/rerank: Jina's and Cohere's rerank API, as llama-server serves it, on a reranker model."""

from __future__ import annotations

from litestar import Request, Response, post

from proxy.body import INFERENCE_BODY_LIMIT
from proxy.llama.lease import Timer
from proxy.openai import schemas
from proxy.openai.models import begin, load_options, new_id
from proxy.openai.sse import json_answer
from proxy.rerank import rerank as score


@post("/v1/rerank", request_max_body_size=INFERENCE_BODY_LIMIT)
async def rerank(request: Request) -> Response[bytes]:
    gate, req, model = await begin(request, schemas.RerankRequest)
    texts = [d if isinstance(d, str) else d.text for d in req.documents or []]
    result = await score(gate, model, await load_options(gate, model, req, embedding=True), req.query, texts, req.top_n,
                         Timer())
    return json_answer(schemas.RerankList(
        id=new_id("rerank-"),
        model=req.model,
        results=[schemas.RerankResult(r.index, r.relevance_score,
                                      schemas.RerankDocument(texts[r.index]) if req.return_documents else None)
                 for r in result.results],
        usage=schemas.EmbeddingUsage(result.usage.prompt_tokens, result.usage.prompt_tokens),
    ))
