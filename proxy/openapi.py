"""The OpenAPI 3.1 document of both dialects (`GET /api/openapi.json`), built from the msgspec
Structs each route decodes its body into and encodes its answer from, so it can't drift from
what the server does; the suite fuzzes the server against it (tests/test_fuzz.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

import msgspec
from litestar import Response, get

from proxy.ollama import schemas as ollama
from proxy.openai import schemas as openai
from supervisor.version import VERSION

_REF = "#/components/schemas/{name}"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
JSON = "application/json"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    body: type | None = None  # the JSON body's Struct
    answer: type | None = None  # the JSON answer's Struct; None: no body
    # Other media types the answer may come in (a stream: one answer Struct per line or event).
    streams: tuple[str, ...] = ()
    status: int = 200
    also: dict[int, str] = field(default_factory=dict)  # other success statuses: description


_CHAT = "Chat; streamed as NDJSON unless stream is false"
OPERATIONS = [
    Operation("get", "/api/version", "The Ollama version answered as", answer=ollama.VersionResponse),
    Operation("get", "/api/tags", "Models in the store", answer=ollama.TagsResponse),
    Operation("get", "/api/ps", "Loaded models", answer=ollama.PsResponse),
    Operation("get", "/api/status", "The server's status, as Ollama's cloud-aware clients ask it",
              answer=ollama.StatusResponse),
    Operation("post", "/api/chat", _CHAT, ollama.ChatRequest, ollama.ChatChunk, (NDJSON,)),
    Operation("post", "/api/generate", "Generate; streamed as NDJSON unless stream is false", ollama.GenerateRequest,
              ollama.GenerateChunk, (NDJSON,)),
    Operation("post", "/api/embed", "Embeddings of one input or several", ollama.EmbedRequest, ollama.EmbedResponse),
    Operation("post", "/api/embeddings", "The embedding of one prompt (the older route)", ollama.EmbeddingsRequest,
              ollama.EmbeddingsResponse),
    Operation("post", "/api/show", "A model's details", ollama.ShowRequest, ollama.ShowResponse),
    Operation("post", "/api/create", "Create a model from uploaded blobs or another model", ollama.CreateRequest,
              ollama.StatusLine, (NDJSON,)),
    Operation("post", "/api/copy", "Copy a model", ollama.CopyRequest),
    Operation("delete", "/api/delete", "Delete a model", ollama.DeleteRequest),
    Operation("post", "/api/pull", "Pull a model from its registry", ollama.PullRequest, ollama.ProgressResponse,
              (NDJSON,)),
    Operation("post", "/api/push", "Push a model to its registry", ollama.PushRequest, ollama.ProgressResponse,
              (NDJSON,)),
    Operation("post", "/api/rerank", "Rank documents against a query (ours)", ollama.RerankRequest,
              ollama.RerankResponse),
    Operation("head", "/api/blobs/{digest}", "Whether the store has a blob"),
    Operation("post", "/api/blobs/{digest}", "Upload a blob (its bytes, checked against the digest)", status=201,
              also={200: "The store had it already"}),
    Operation("post", "/v1/chat/completions", "OpenAI's chat completions", openai.ChatCompletionRequest,
              openai.ChatCompletion, (SSE,)),
    Operation("post", "/v1/completions", "OpenAI's completions", openai.CompletionRequest, openai.Completion, (SSE,)),
    Operation("post", "/v1/embeddings", "OpenAI's embeddings", openai.EmbeddingRequest, openai.EmbeddingList),
    Operation("post", "/v1/rerank", "Jina's and Cohere's rerank API", openai.RerankRequest, openai.RerankList),
    Operation("get", "/v1/models", "Models, as OpenAI lists them", answer=openai.ModelList),
    Operation("get", "/v1/models/{model}", "One model, as OpenAI shows it", answer=openai.Model),
    # Passed to llama-server whole: only the fields that route them are llamagate's.
    Operation("post", "/v1/responses", "OpenAI's Responses API", openai.Routed, dict, (SSE,)),
    Operation("post", "/v1/messages", "Anthropic's Messages API", openai.Routed, dict, (SSE,)),
    Operation("post", "/v1/messages/count_tokens", "Anthropic's token count", openai.Routed, dict),
]


def _error_for(path: str) -> type:
    if path.startswith("/v1/messages"):
        return openai.AnthropicError
    return openai.ErrorResponse if path.startswith("/v1/") else ollama.ErrorResponse


def _ref(struct: type | None, refs: dict[type, Any]) -> dict[str, Any]:
    return {"type": "object"} if struct is dict else refs[struct]


def _operation(op: Operation, refs: dict[type, Any]) -> dict[str, Any]:
    error = {"description": "An error in the dialect's shape",
             "content": {JSON: {"schema": refs[_error_for(op.path)]}}}
    if op.answer is None:
        ok: dict[str, Any] = {"description": "Done"}
    else:
        content = {media: {"schema": _ref(op.answer, refs)} for media in (JSON, *op.streams)}
        ok = {"description": "The answer; a stream holds one such object per line or event", "content": content}
    # HEAD answers have no body, their errors neither.
    responses = {str(op.status): ok, **{str(s): {"description": d} for s, d in op.also.items()},
                 "4XX": error if op.method != "head" else {"description": "No such blob, or not a digest"},
                 "5XX": error}
    out: dict[str, Any] = {"summary": op.summary, "responses": responses}
    params = [name[1:-1] for name in op.path.split("/") if name.startswith("{")]
    if params:
        out["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(op.body, refs)}}}
    elif op.method == "post":
        out["requestBody"] = {"required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}
    return out


@cache
def document() -> bytes:
    structs = sorted({t for op in OPERATIONS for t in (op.body, op.answer, _error_for(op.path))
                      if t is not None and t is not dict}, key=lambda t: (t.__module__, t.__name__))
    schemas, components = msgspec.json.schema_components(structs, ref_template=_REF)
    refs = dict(zip(structs, schemas))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    return msgspec.json.encode({
        "openapi": "3.1.0",
        "info": {"title": "llamagate", "version": VERSION,
                 "description": "Ollama's API (/api) and the OpenAI-compatible one (/v1), as llamagate serves them."},
        "paths": paths,
        "components": {"schemas": components},
    })


@get("/api/openapi.json")
async def openapi() -> Response[bytes]:
    return Response(document(), media_type=JSON)
