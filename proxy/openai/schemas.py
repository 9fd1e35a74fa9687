"""The OpenAI-compatible wire shapes (`/v1/*`) as msgspec Structs: requests as the official
clients send them (plus Ollama's `options`, `num_ctx` and `keep_alive` extensions), answers as
they parse them, and the error bodies of OpenAI and Anthropic."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from proxy.rendering import DebugInfo
from proxy.semantics import KeepAlive, Options

Count = Annotated[int, msgspec.Meta(ge=1, le=128)]
Stop = str | list[str] | None


# Requests ------------------------------------------------------------------------------------


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class TextPart(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ImageURL(msgspec.Struct, omit_defaults=True):
    url: str
    detail: str | None = None


class ImagePart(msgspec.Struct, tag="image_url", tag_field="type"):
    image_url: ImageURL | str


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str = "{}"


class ToolCall(msgspec.Struct):
    function: FunctionCall
    id: str = ""
    type: Literal["function"] = "function"


class Message(msgspec.Struct):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # Earlier reasoning: `reasoning` as Ollama reads it, `reasoning_content` as llama-server names it.
    reasoning: str | None = None
    reasoning_content: str | None = None


class JSONSchema(msgspec.Struct):
    name: str = "schema"
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(msgspec.Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchema | None = None


class FunctionDef(msgspec.Struct, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct):
    function: FunctionDef
    type: Literal["function"] = "function"


class NamedFunction(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct):
    function: NamedFunction
    type: Literal["function"] = "function"


class Reasoning(msgspec.Struct):
    effort: str | None = None


class _Extensions(msgspec.Struct, kw_only=True):
    """Ollama's native knobs, honoured on /v1 too (Ollama ignores them there)."""

    options: Options | None = None
    num_ctx: Annotated[int, msgspec.Meta(ge=1)] | None = None
    keep_alive: KeepAlive = None


class _Sampling(_Extensions, kw_only=True):
    model: str = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    seed: int | None = None
    stop: Stop = None
    max_tokens: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    n: Count = 1
    user: str | None = None


class ChatCompletionRequest(_Sampling, kw_only=True):
    messages: list[Message] = []
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # How hard a thinking model thinks, as Ollama's `think` (see translate.reasoning_think).
    reasoning_effort: str | None = None
    reasoning: Reasoning | None = None
    # The prompt the model's template makes of the request, answered instead of running it.
    debug_render_only: bool = msgspec.field(default=False, name="_debug_render_only")


class CompletionRequest(_Sampling, kw_only=True):
    prompt: str | list[str] | None = None
    suffix: str | None = None
    echo: bool = False
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=5)] | None = None


class EmbeddingRequest(_Extensions, kw_only=True):
    model: str = ""
    # A string, or a list of strings, of token ids, or of token-id lists (checked in translate:
    # msgspec can't tell lists apart by their items).
    input: str | list[str | int | list[int]] | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None
    user: str | None = None


class RerankDocument(msgspec.Struct):
    text: str


class RerankRequest(_Extensions, kw_only=True):
    """Jina's and Cohere's rerank request, which llama-server's /v1/rerank takes too; a document
    is a string or Jina's `{"text": ...}`."""

    model: str = ""
    query: str = ""
    documents: list[str | RerankDocument] | None = None
    top_n: int | None = None
    return_documents: bool = False
    user: str | None = None


class Routed(_Extensions, kw_only=True):
    """What llamagate reads of a request it passes on whole (Responses, Anthropic Messages)."""

    model: str = ""
    # Not read (the answer's content type tells a stream), but checked and in the OpenAPI schema.
    stream: bool = False
    # The Responses API's; Anthropic's `thinking` is llama-server's to read.
    reasoning: Reasoning | None = None


# Answers -------------------------------------------------------------------------------------


class ToolCallMessage(msgspec.Struct):
    tool_calls: list[ToolCall]
    role: str = "assistant"
    content: str | None = None


class IndexedToolCall(msgspec.Struct):
    function: FunctionCall
    id: str
    type: str = "function"
    index: int = 0


class ToolCallDelta(msgspec.Struct):
    tool_calls: list[IndexedToolCall]
    role: str = "assistant"


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class _Answer(msgspec.Struct, kw_only=True):
    """What every chat or text answer, and every chunk of one, starts with."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str


class ChatChoice(msgspec.Struct):
    index: int
    message: msgspec.Raw
    logprobs: msgspec.Raw
    finish_reason: str | None


class ChatCompletion(_Answer, kw_only=True):
    object: str = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class RenderedChat(_Answer, kw_only=True):
    """`_debug_render_only`'s answer, as Ollama's /v1 gives it: a completion with an empty message."""

    object: str = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage
    debug_info: DebugInfo = msgspec.field(name="_debug_info")


class ChunkChoice(msgspec.Struct):
    index: int
    delta: msgspec.Raw
    logprobs: msgspec.Raw
    finish_reason: str | None


class ChatCompletionChunk(_Answer, kw_only=True):
    object: str = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None


class TextLogprobs(msgspec.Struct):
    """The legacy completions' logprobs: parallel lists, one item per token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: TextLogprobs | None
    finish_reason: str | None


class Completion(_Answer, kw_only=True):
    """A text_completion answer, and each chunk of a streamed one."""

    object: str = "text_completion"
    choices: list[TextChoice]
    usage: Usage | None = None


class Embedding(msgspec.Struct):
    index: int
    embedding: list[float] | str
    object: str = "embedding"


class EmbeddingList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class RerankResult(msgspec.Struct, omit_defaults=True):
    index: int
    relevance_score: float
    document: RerankDocument | None = None  # with return_documents


class RerankList(msgspec.Struct, kw_only=True):
    id: str
    object: str = "list"
    model: str
    results: list[RerankResult]
    usage: EmbeddingUsage


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(msgspec.Struct):
    data: list[Model]
    object: str = "list"


# Errors --------------------------------------------------------------------------------------


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(msgspec.Struct):
    error: ErrorDetail


class AnthropicErrorDetail(msgspec.Struct):
    type: str
    message: str


class AnthropicError(msgspec.Struct, kw_only=True):
    type: str = "error"
    error: AnthropicErrorDetail


class ResponsesStreamError(msgspec.Struct, kw_only=True):
    """The Responses API's `error` stream event."""

    type: str = "error"
    message: str
    code: str | None = None
    param: str | None = None
