"""Ollama's native wire shapes (`/api/*`) as msgspec Structs; unknown fields are ignored, as
Ollama's Go decoder ignores them, and `omit_defaults` drops the fields Ollama omits when empty."""

from __future__ import annotations

from typing import Any

import msgspec

KeepAlive = str | int | float | None
Format = str | dict[str, Any] | None


class Options(msgspec.Struct, omit_defaults=True):
    """The `options` map; null means unset."""

    num_predict: int | None = None
    num_keep: int | None = None
    seed: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_last_n: int | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    # Load-time options: they shape the llama-server process.
    num_ctx: int | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    num_thread: int | None = None


class Message(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | None = None


class ChatRequest(msgspec.Struct):
    model: str = ""
    messages: list[Message] | None = None
    format: Format = None
    options: Options | None = None
    stream: bool | None = None
    keep_alive: KeepAlive = None


class GenerateRequest(msgspec.Struct):
    model: str = ""
    prompt: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    format: Format = None
    options: Options | None = None
    stream: bool | None = None
    keep_alive: KeepAlive = None


class OutMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str  # no default: always sent, "" included, as clients require
    thinking: str = ""


class ChatChunk(msgspec.Struct, omit_defaults=True):
    model: str
    created_at: str
    message: OutMessage
    done: bool
    done_reason: str = ""
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class GenerateChunk(msgspec.Struct, omit_defaults=True, kw_only=True):
    model: str
    created_at: str
    response: str
    thinking: str = ""
    done: bool
    done_reason: str = ""
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class ModelDetails(msgspec.Struct):
    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class ListedModel(msgspec.Struct):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagsResponse(msgspec.Struct):
    models: list[ListedModel]


class VersionResponse(msgspec.Struct):
    version: str


class CreateRequest(msgspec.Struct):
    model: str = ""
    name: str = ""
    from_: str = msgspec.field(default="", name="from")
    files: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    license: str | list[str] | None = None
    quantize: str | None = None
    stream: bool | None = None


class StatusLine(msgspec.Struct, omit_defaults=True):
    status: str


class ErrorResponse(msgspec.Struct):
    error: str


class PullRequest(msgspec.Struct):
    model: str = ""
    name: str = ""
    insecure: bool = False
    stream: bool | None = None


class ProgressResponse(msgspec.Struct, omit_defaults=True):
    """A pull's progress line; `digest`, `total` and `completed` are omitted when empty."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0
