"""Pure mappings between Ollama's native shapes and llama-server's: no I/O, table-tested."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from proxy import llama
from proxy.ollama import schemas
from supervisor.errors import bad_request

# Ollama's option defaults, sent explicitly because llama-server's differ (top_p 0.95, min_p 0.05).
DEFAULT_OPTIONS: dict[str, Any] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "repeat_last_n": 64,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": -1,
}
_SAMPLING_FIELDS = set(llama.Sampling.__struct_fields__)


@dataclass(frozen=True)
class ModelDefaults:
    """What a model's Modelfile layers contribute to a request."""

    system: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    messages: tuple[tuple[str, str], ...] = ()


def sampling(defaults: ModelDefaults, options: schemas.Options | None, num_ctx: int) -> dict[str, Any]:
    """Ollama's defaults ← the model's PARAMETERs ← the request's options, as llama-server fields.

    An unbounded or oversized num_predict is bounded to 10 × num_ctx, as Ollama does, so that a
    runaway generation cannot hold a slot forever.
    """
    merged = dict(DEFAULT_OPTIONS)
    merged.update(defaults.params)
    if options is not None:
        merged.update((k, v) for k, v in msgspec.structs.asdict(options).items() if v is not None)
    out = {k: v for k, v in merged.items() if v is not None and k in _SAMPLING_FIELDS}
    num_predict = merged.get("num_predict")
    if num_predict is None or num_predict < 0 or num_predict > 10 * num_ctx:
        num_predict = 10 * num_ctx
    out["n_predict"] = num_predict
    if merged.get("num_keep") is not None:
        out["n_keep"] = merged["num_keep"]
    return out


def response_format(fmt: schemas.Format) -> dict[str, Any] | None:
    """`format`: "" or absent → none, "json" → any JSON object, an object → that JSON schema."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": fmt}}
    raise bad_request(f'invalid format: {msgspec.json.encode(fmt).decode()}; expected "json" or a valid JSON Schema object')


def chat_messages(defaults: ModelDefaults, messages: list[schemas.Message]) -> list[llama.ChatMessage]:
    """The model's SYSTEM (unless the request starts with its own) and MESSAGEs, then the request's."""
    out = []
    if defaults.system and not (messages and messages[0].role == "system"):
        out.append(llama.ChatMessage("system", defaults.system))
    out.extend(llama.ChatMessage(role, content) for role, content in defaults.messages)
    out.extend(llama.ChatMessage(m.role.lower(), m.content or "") for m in messages)
    return out


def chat_request(req: schemas.ChatRequest, defaults: ModelDefaults, num_ctx: int) -> llama.ChatRequest:
    return llama.ChatRequest(
        messages=chat_messages(defaults, req.messages or []),
        response_format=response_format(req.format),
        stream=True,
        cache_prompt=True,
        **sampling(defaults, req.options, num_ctx),
    )


def generate_request(
    req: schemas.GenerateRequest, defaults: ModelDefaults, num_ctx: int
) -> llama.ChatRequest | llama.CompletionRequest:
    """Raw prompts go to /completion verbatim; the others are rendered by the model's chat
    template as a one-turn chat, which is what Ollama's template does with them."""
    options = sampling(defaults, req.options, num_ctx)
    if req.raw:
        if req.system or req.template or req.context:
            raise bad_request("raw mode does not support template, system, or context")
        fmt = response_format(req.format)
        schema = None
        if fmt is not None:
            schema = fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else {"type": "object"}
        return llama.CompletionRequest(
            prompt=req.prompt, json_schema=schema, stream=True, cache_prompt=True, **options
        )
    if req.template:
        raise bad_request("template overrides are not supported: the model's own chat template is used")
    messages = [schemas.Message("user", req.prompt)]
    if req.system:
        messages.insert(0, schemas.Message("system", req.system))
    return llama.ChatRequest(
        messages=chat_messages(defaults, messages),
        response_format=response_format(req.format),
        stream=True,
        cache_prompt=True,
        **options,
    )


def done_reason(reason: str | None) -> str:
    """llama-server's finish_reason (chat) or stop_type (completion) as Ollama's done_reason."""
    return "length" if reason in ("length", "limit") else "stop"


def metrics(timings: llama.Timings | None, total_ns: int, load_ns: int) -> dict[str, int]:
    """The final chunk's counters; prompt_eval_count includes the cached prompt tokens."""
    t = timings or llama.Timings()
    return {
        "total_duration": total_ns,
        "load_duration": load_ns,
        "prompt_eval_count": t.cache_n + t.prompt_n,
        "prompt_eval_duration": int(t.prompt_ms * 1e6),
        "eval_count": t.predicted_n,
        "eval_duration": int(t.predicted_ms * 1e6),
    }
