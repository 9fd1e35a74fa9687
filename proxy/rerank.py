"""Reranking, which both dialects serve (/api/rerank, /v1/rerank) and Ollama has no route for: a
reranker GGUF's runner (llama-server --reranking) scores each document against the query."""

from __future__ import annotations

from proxy.gateway import Gateway
from proxy.llama import wire
from proxy.llama.lease import Timer
from supervisor.errors import bad_request
from supervisor.models.model import Model
from supervisor.runners.scheduler import LoadOptions


def refuse_for_embeddings(model: Model) -> None:
    """A reranker gives one score per text, not an embedding: asking it for one is a 400."""
    if "rerank" in model.capabilities:
        raise bad_request(f'"{model.name.display}" does not support embedding: it is a reranker, use /api/rerank')


async def rerank(
    gate: Gateway, model: Model, load: LoadOptions, query: str, documents: list[str], top_n: int | None, timer: Timer,
) -> wire.RerankResponse:
    """llama-server's results, best first (`top_n` of them when asked), on the model's
    embedding runner, which is started with --reranking for a reranker."""
    if "rerank" not in model.capabilities:
        raise bad_request(f'"{model.name.display}" does not support rerank')
    if not query:
        raise bad_request("query is required")
    if not documents:
        raise bad_request("documents must be a non-empty list of strings")
    if top_n is not None and top_n < 1:
        raise bad_request("top_n must be at least 1")
    async with gate.inference.lease(model, load, timer) as lease:
        return await lease.post("/v1/rerank", wire.RerankRequest(query, documents, top_n), wire.RerankResponse)
