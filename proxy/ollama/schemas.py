"""Ollama's native wire shapes (`/api/*`) as msgspec Structs; unknown fields are ignored, as
Ollama's Go decoder ignores them, and `omit_defaults` drops the fields Ollama omits when empty."""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.rendering import DebugInfo
from proxy.semantics import KeepAlive, Options, Think

Format = str | dict[str, Any] | None


class ToolCallFunction(msgspec.Struct, omit_defaults=True):
    name: str
    # A JSON object on Ollama's wire (OpenAI's is a string); a string sent by a lenient client
    # is accepted and decoded in translate.
    arguments: dict[str, Any] | str = msgspec.field(default_factory=dict)
    index: int | None = None


class ToolCall(msgspec.Struct, omit_defaults=True):
    function: ToolCallFunction
    id: str | None = None
    type: str | None = None


class Message(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class ChatRequest(msgspec.Struct):
    model: str = ""
    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None
    format: Format = None
    options: Options | None = None
    stream: bool | None = None
    keep_alive: KeepAlive = None
    think: Think = None
    logprobs: bool = False
    top_logprobs: int = 0
    # Both default to true, as Ollama's: drop the oldest messages to fit num_ctx; let the runner
    # shift its context while generating instead of stopping at the limit.
    truncate: bool | None = None
    shift: bool | None = None
    # The prompt the model's template makes of the request, answered instead of running it.
    debug_render_only: bool = msgspec.field(default=False, name="_debug_render_only")


class GenerateRequest(msgspec.Struct):
    model: str = ""
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None
    format: Format = None
    options: Options | None = None
    stream: bool | None = None
    keep_alive: KeepAlive = None
    think: Think = None
    logprobs: bool = False
    top_logprobs: int = 0
    # As on ChatRequest; a prompt too long for num_ctx keeps its first num_keep tokens and its end.
    truncate: bool | None = None
    shift: bool | None = None
    debug_render_only: bool = msgspec.field(default=False, name="_debug_render_only")


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None = None


class Logprob(msgspec.Struct, omit_defaults=True):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] | None = None


class OutToolCall(msgspec.Struct):
    id: str
    function: ToolCallFunction


class OutMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str  # no default: always sent, "" included, as clients require
    thinking: str = ""
    tool_calls: list[OutToolCall] | None = None


class ChatChunk(msgspec.Struct, omit_defaults=True):
    model: str
    created_at: str
    message: OutMessage
    done: bool
    done_reason: str = ""
    logprobs: list[Logprob] | None = None
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    debug_info: DebugInfo | None = msgspec.field(default=None, name="_debug_info")


class GenerateChunk(msgspec.Struct, omit_defaults=True, kw_only=True):
    model: str
    created_at: str
    response: str
    thinking: str = ""
    done: bool
    done_reason: str = ""
    context: list[int] | None = None
    logprobs: list[Logprob] | None = None
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    debug_info: DebugInfo | None = msgspec.field(default=None, name="_debug_info")


class ModelDetails(msgspec.Struct, omit_defaults=True):
    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str
    # Listed by /api/tags only (Ollama 0.30), omitted when unknown, as Ollama omits them.
    context_length: int = 0
    embedding_length: int = 0


class ListedModel(msgspec.Struct, omit_defaults=True):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails
    capabilities: list[str] | None = None
    # A model another Ollama-API server serves: its name there, and that server.
    remote_model: str = ""
    remote_host: str = ""


class TagsResponse(msgspec.Struct):
    models: list[ListedModel]


class VersionResponse(msgspec.Struct):
    version: str


class CloudStatus(msgspec.Struct):
    disabled: bool
    source: str  # none (enabled), env, config or both: where it was turned off


class StatusResponse(msgspec.Struct):
    cloud: CloudStatus


class CreateRequest(msgspec.Struct):
    model: str = ""
    name: str = ""
    from_: str = msgspec.field(default="", name="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    license: str | list[str] | None = None
    quantize: str = ""
    quantization: str = ""  # its older name, still read by Ollama
    stream: bool | None = None
    remote_host: str = ""  # with `from`: the model of that name served by that Ollama-API server
    # Ollama's built-in renderer and parser, and the least Ollama version the model needs: stored
    # in the config blob and shown; `info` overrides the details the GGUF would give.
    renderer: str = ""
    parser: str = ""
    requires: str = ""
    info: dict[str, Any] | None = None
    # A draft model for speculative decoding (one GGUF), stored as the model's draft layer.
    draft_files: dict[str, str] | None = None
    draft_quantize: str = ""


class StatusLine(msgspec.Struct, omit_defaults=True):
    status: str


class EmbedRequest(msgspec.Struct):
    model: str = ""
    input: str | list[str] | None = None
    truncate: bool = True
    dimensions: int = 0
    options: Options | None = None
    keep_alive: KeepAlive = None


class EmbedResponse(msgspec.Struct):
    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


class EmbeddingsRequest(msgspec.Struct):
    model: str = ""
    prompt: str = ""
    options: Options | None = None
    keep_alive: KeepAlive = None


class EmbeddingsResponse(msgspec.Struct):
    embedding: list[float]


class ShowRequest(msgspec.Struct):
    model: str = ""
    name: str = ""
    verbose: bool = False
    system: str | None = None


class ShowMessage(msgspec.Struct):
    role: str
    content: str


class Thinking(msgspec.Struct):
    """What `think` may be for the model (booleans, or level names) and what it is when absent
    (Ollama #18473; Codex reads it to offer reasoning levels)."""

    values: list[bool | str]
    default: bool | str


class Tensor(msgspec.Struct):
    name: str
    type: str
    shape: list[int]


class ShowResponse(msgspec.Struct, omit_defaults=True):
    """`model_info`, `capabilities` and the strings clients parse are always sent."""

    modelfile: str
    parameters: str
    template: str
    license: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str
    system: str = ""
    messages: list[ShowMessage] | None = None
    projector_info: dict[str, Any] | None = None
    thinking: Thinking | None = None
    tensors: list[Tensor] | None = None  # with verbose
    requires: str = ""


class RunningModel(msgspec.Struct, omit_defaults=True):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int
    # Ours (Ollama's clients ignore them): requests waiting in the queue for this model, and a
    # load under way (waiting for room included), since when and for how long so far.
    queued: int
    loading: bool
    loading_since: str | None = None
    load_seconds: float | None = None


class PsResponse(msgspec.Struct):
    models: list[RunningModel]


class CopyRequest(msgspec.Struct):
    source: str = ""
    destination: str = ""


class DeleteRequest(msgspec.Struct):
    model: str = ""
    name: str = ""


class ErrorResponse(msgspec.Struct):
    error: str


class PullRequest(msgspec.Struct):
    model: str = ""
    name: str = ""
    insecure: bool = False
    stream: bool | None = None


class PushRequest(PullRequest):
    """/api/push's body: the fields of a pull's."""


class ProgressResponse(msgspec.Struct, omit_defaults=True):
    """A pull's or push's progress line; `digest`, `total` and `completed` are omitted when empty."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


class RerankRequest(msgspec.Struct):
    """Ours: Ollama has no rerank route (ollama/ollama#3368); the fields are those of the proposals
    there and of /v1/rerank."""

    model: str = ""
    query: str = ""
    documents: list[str] | None = None
    top_n: int | None = None
    options: Options | None = None
    keep_alive: KeepAlive = None


class RerankResult(msgspec.Struct):
    index: int
    document: str
    relevance_score: float


class RerankResponse(msgspec.Struct):
    model: str
    results: list[RerankResult]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
