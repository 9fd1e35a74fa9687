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


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | list[Any] | None = None
    reasoning_content: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class ChatRequest(Sampling, omit_defaults=True, kw_only=True):
    messages: list[ChatMessage]
    # No defaults: omit_defaults would drop them, and llama-server's own defaults are false.
    stream: bool
    cache_prompt: bool
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionRequest(Sampling, omit_defaults=True, kw_only=True):
    prompt: str | list[int]
    stream: bool
    cache_prompt: bool
    json_schema: dict[str, Any] | None = None
    grammar: str | None = None


class Timings(msgspec.Struct):
    cache_n: int = 0
    prompt_n: int = 0
    prompt_ms: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0


class Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[Any] | None = None


class ChunkChoice(msgspec.Struct):
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None


class ChatChunk(msgspec.Struct):
    """One event of a streamed /v1/chat/completions; the last one carries `timings`."""

    choices: list[ChunkChoice] = []
    timings: Timings | None = None


class CompletionChunk(msgspec.Struct):
    """One event of a streamed /completion; the final one has `stop` true and `timings`."""

    content: str = ""
    stop: bool = False
    stop_type: str = ""
    timings: Timings | None = None


class ErrorBody(msgspec.Struct):
    message: str = ""
    type: str = ""
    code: int = 0


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody | str
