"""Reranking (/api/rerank, /v1/rerank) on a real llama-server started with --reranking, serving a
random-weight BERT reranker GGUF the test writes (tests/tinymodel.py); capabilities list it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Server, runner_of
from tinymodel import write_tiny_reranker

QUERY = "what is the capital of france"
DOCUMENTS = ["paris is the capital of france", "the cat sat on the mat", "dog", "zebra"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, llama_server_binary: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("rerank")
    server = Server(tmp)
    server.create("rr", write_tiny_reranker(tmp / "reranker.gguf"))
    server.create("tiny", tiny_gguf)
    yield server
    server.stop()


def test_a_reranker_lists_rerank(srv: Server):
    show = httpx.post(f"{srv.url}/api/show", json={"model": "rr"}).json()
    assert show["capabilities"] == ["rerank"] and show["model_info"]["bert.pooling_type"] == 4
    tags = {m["name"]: m for m in httpx.get(f"{srv.url}/api/tags").json()["models"]}
    assert tags["rr:latest"]["capabilities"] == ["rerank"]
    assert "rerank" not in tags["tiny:latest"]["capabilities"]


def test_api_rerank_scores_on_a_reranking_runner(srv: Server):
    r = httpx.post(f"{srv.url}/api/rerank", json={"model": "rr", "query": QUERY, "documents": DOCUMENTS}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "rr" and body["prompt_eval_count"] > 0
    assert body["total_duration"] >= body["load_duration"] > 0
    results = body["results"]
    assert sorted(x["index"] for x in results) == [0, 1, 2, 3]
    assert [x["document"] for x in results] == [DOCUMENTS[x["index"]] for x in results]
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4, "best first, and the texts matter"
    # The runner is llama-server --reranking, and its own scores are ours.
    (pid,) = srv.runner_pids()
    assert "--reranking" in Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    url, headers = runner_of(srv)
    direct = httpx.post(f"{url}/v1/rerank", headers=headers, json={"query": QUERY, "documents": DOCUMENTS}).json()
    ours = {x["index"]: x["relevance_score"] for x in results}
    assert {d["index"]: d["relevance_score"] for d in direct["results"]} == ours
    top = httpx.post(f"{srv.url}/api/rerank", json={"model": "rr", "query": QUERY, "documents": DOCUMENTS, "top_n": 2})
    assert top.json()["results"] == results[:2]


def test_v1_rerank_is_the_jina_cohere_shape(srv: Server):
    api = httpx.post(f"{srv.url}/api/rerank", json={"model": "rr", "query": QUERY, "documents": DOCUMENTS}).json()
    documents = [DOCUMENTS[0], {"text": DOCUMENTS[1]}, *DOCUMENTS[2:]]  # Jina's objects too
    r = httpx.post(f"{srv.url}/v1/rerank", json={"model": "rr", "query": QUERY, "documents": documents, "top_n": 3,
                                                 "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "rr" and body["id"].startswith("rerank-")
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    assert body["results"] == [{"index": x["index"], "relevance_score": x["relevance_score"],
                                "document": {"text": x["document"]}} for x in api["results"][:3]]
    bare = httpx.post(f"{srv.url}/v1/rerank", json={"model": "rr", "query": QUERY, "documents": DOCUMENTS}).json()
    assert all(set(x) == {"index", "relevance_score"} for x in bare["results"])


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/rerank", {"model": "tiny", "query": "q", "documents": ["a"]}, 400,
         '"tiny:latest" does not support rerank'),
        ("/api/rerank", {"model": "rr", "query": "q", "documents": []}, 400, "documents must be a non-empty list"),
        ("/api/rerank", {"model": "rr", "documents": ["a"]}, 400, "query is required"),
        ("/api/rerank", {"model": "rr", "query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n must be at least 1"),
        ("/api/rerank", {"model": "nope", "query": "q", "documents": ["a"]}, 404, "not found"),
        ("/api/rerank", {"model": "rr", "query": "q", "documents": "a"}, 400, "documents"),
        ("/api/embed", {"model": "rr", "input": "a"}, 400, '"rr:latest" does not support embedding'),
    ],
)
def test_api_errors(srv: Server, path, body, status, message):
    r = httpx.post(f"{srv.url}{path}", json=body)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_v1_errors_have_openai_shape(srv: Server):
    r = httpx.post(f"{srv.url}/v1/rerank", json={"model": "tiny", "query": "q", "documents": ["a"]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "does not support rerank" in r.json()["error"]["message"]
    r = httpx.post(f"{srv.url}/v1/rerank", json={"model": "nope", "query": "q", "documents": ["a"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(f"{srv.url}/v1/embeddings", json={"model": "rr", "input": "a"})
    assert r.status_code == 400 and "does not support embedding" in r.json()["error"]["message"]
