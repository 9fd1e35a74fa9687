"""llama-server's wire shapes: the request bodies we send it and the chunks it streams back."""

from __future__ import annotations

from typing import Any

import msgspec


class Sampling(msgspec.Struct, omit_defaults=True):
    """Sampling fields shared by llama-server's /completion and /v1/chat/completions."""

    n_predict: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n_keep: int | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    # The most tokens the draft model proposes per step (with --model-draft), per request.
    speculative_n_max: int | None = msgspec.field(default=None, name="speculative.n_max")


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | list[Any] | None = None
    reasoning_content: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = True


class ChatRequest(Sampling, omit_defaults=True, kw_only=True):
    messages: list[ChatMessage]
    # No defaults: omit_defaults would drop them, and llama-server's own defaults are false.
    stream: bool
    cache_prompt: bool
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logit_bias: dict[str, float] | None = None
    # Set by the hop on every stream (see Hop.stream): a chunk per prompt batch, dropped there.
    return_progress: bool | None = None


class CompletionRequest(Sampling, omit_defaults=True, kw_only=True):
    """Native /completion, and (with `logprobs` as a count) OpenAI's /v1/completions."""

    # A string, or token ids and strings mixed (a generate `context` followed by the new prompt).
    prompt: str | list[int | str]
    # No defaults: omit_defaults would drop them, and llama-server's own defaults are false.
    stream: bool
    cache_prompt: bool
    stream_options: StreamOptions | None = None
    json_schema: dict[str, Any] | None = None
    grammar: str | None = None
    n_probs: int | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = None
    # Each chunk then carries the ids of the tokens it generated (for generate's `context`).
    return_tokens: bool | None = None
    # Set by the hop on every stream (see Hop.stream): a chunk per prompt batch, dropped there.
    return_progress: bool | None = None


class InfillRequest(Sampling, omit_defaults=True, kw_only=True):
    """Fill-in-the-middle: llama-server builds the prompt from the model's FIM tokens."""

    input_prefix: str
    input_suffix: str
    prompt: str = ""
    # No defaults: omit_defaults would drop them, and llama-server's own defaults are false.
    stream: bool
    cache_prompt: bool
    n_probs: int | None = None
    # Set by the hop on every stream (see Hop.stream): a chunk per prompt batch, dropped there.
    return_progress: bool | None = None


class TokenizeRequest(msgspec.Struct):
    content: str
    add_special: bool = False


class TokenizeResponse(msgspec.Struct):
    tokens: list[int]


class DetokenizeRequest(msgspec.Struct):
    tokens: list[int]


class DetokenizeResponse(msgspec.Struct):
    content: str


class ApplyTemplateRequest(msgspec.Struct, omit_defaults=True):
    messages: list[ChatMessage]
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Any] | None = None  # templates render them into the prompt


class ApplyTemplateResponse(msgspec.Struct):
    prompt: str


class EmbeddingsRequest(msgspec.Struct):
    # Texts and token-id lists (/api/embed tokenizes what may not fit), or what /v1/embeddings was sent: a string, or
    # a list of strings, of token ids or of token-id lists.
    input: str | list[Any]
    encoding_format: str = "float"


class EmbeddingItem(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class EmbeddingsUsage(msgspec.Struct):
    prompt_tokens: int = 0


class EmbeddingsResponse(msgspec.Struct):
    data: list[EmbeddingItem]
    usage: EmbeddingsUsage = msgspec.field(default_factory=EmbeddingsUsage)


class RerankRequest(msgspec.Struct, omit_defaults=True):
    query: str
    documents: list[str]
    top_n: int | None = None


class RerankResult(msgspec.Struct):
    index: int
    relevance_score: float


class RerankResponse(msgspec.Struct):
    """Results best first, `top_n` of them when asked."""

    results: list[RerankResult]
    usage: EmbeddingsUsage = msgspec.field(default_factory=EmbeddingsUsage)


class Timings(msgspec.Struct):
    cache_n: int = 0
    prompt_n: int = 0
    prompt_ms: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0


class ToolCallDeltaFunction(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct):
    """A piece of a streamed tool call: the first piece of each `index` has its id and name,
    the arguments string arrives in pieces."""

    index: int = 0
    id: str | None = None
    function: ToolCallDeltaFunction = msgspec.field(default_factory=ToolCallDeltaFunction)


class Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class TopProb(msgspec.Struct):
    token: str = ""
    logprob: float = 0.0
    bytes: list[int] | None = None


class TokenProb(msgspec.Struct):
    token: str = ""
    logprob: float = 0.0
    bytes: list[int] | None = None
    top_logprobs: list[TopProb] = []


class ChoiceLogprobs(msgspec.Struct):
    content: list[TokenProb] | None = None


class ChunkChoice(msgspec.Struct):
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatChunk(msgspec.Struct):
    """One event of a streamed /v1/chat/completions; the last one carries `timings`."""

    choices: list[ChunkChoice] = []
    timings: Timings | None = None


class CompletionChunk(msgspec.Struct):
    """One event of a streamed /completion; the final one has `stop` true and `timings`."""

    content: str = ""
    tokens: list[int] = []  # with return_tokens
    stop: bool = False
    stop_type: str = ""
    timings: Timings | None = None
    completion_probabilities: list[TokenProb] | None = None


class Usage(msgspec.Struct, omit_defaults=True):
    """OpenAI's usage as llama-server reports it: prompt_tokens include the cached ones."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None


# JSON null as a raw value (msgspec can't put Raw in a union with None).
NULL = msgspec.Raw(b"null")


class OpenAIChoice(msgspec.Struct):
    """One choice of an OpenAI-shaped answer (chat or text, whole or streamed); the parts we
    pass on untouched stay raw JSON."""

    index: int = 0
    message: msgspec.Raw = NULL
    delta: msgspec.Raw = NULL
    text: str | None = None
    logprobs: msgspec.Raw = NULL
    finish_reason: str | None = None


class OpenAIResult(msgspec.Struct):
    """llama-server's /v1/chat/completions or /v1/completions answer, or one chunk of it."""

    choices: list[OpenAIChoice] = []
    usage: Usage | None = None
    timings: Timings | None = None  # llama-server's own, on the last chunk: generation time


class ErrorBody(msgspec.Struct):
    message: str = ""
    type: str = ""
    code: int = 0


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody | str
