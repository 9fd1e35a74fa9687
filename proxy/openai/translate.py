"""Pure mappings between the OpenAI-compatible shapes and llama-server's: no I/O, table-tested.

llama-server speaks OpenAI itself, so most of a request passes through; what llamagate adds is
Ollama's model semantics (Modelfile SYSTEM/PARAMETER/MESSAGE, `options`, bounded generation),
the two rewrites Ollama documents (see "Rewrites"), and answers that name the model as asked.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any

import msgspec

from proxy.llama import wire
from proxy import semantics
from proxy.openai import schemas
from proxy.semantics import Options
from supervisor.errors import bad_request

SYSTEM_FINGERPRINT = "fp_llamagate"


# Rewrites ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rewrites:
    """The card's rewrites of OpenAI's semantics, as Ollama documents them for /v1; each has a
    setting to turn it off (Config.openai_seed_greedy, Config.openai_finish_stop)."""

    # A request with `seed` runs at temperature 0 (LLAMAGATE_OPENAI_SEED_GREEDY).
    seed_greedy: bool = True
    # `finish_reason` is always "stop", never "length" or "tool_calls" (LLAMAGATE_OPENAI_FINISH_STOP).
    finish_stop: bool = True


def finish_reason(reason: str | None, rewrites: Rewrites) -> str | None:
    """llama-server's finish_reason as the client sees it; None (not finished yet) stays None."""
    if reason is None:
        return None
    return "stop" if rewrites.finish_stop else reason


# Requests ------------------------------------------------------------------------------------


def requested_num_ctx(req: schemas._Extensions) -> int | None:
    """The `num_ctx` extension, top-level or in `options`."""
    return req.num_ctx or (req.options.num_ctx if req.options else None)


def options(req: schemas._Sampling, max_tokens: int | None, rewrites: Rewrites) -> Options:
    """The request's OpenAI fields over its `options` extension, as Ollama options.

    Omitted fields stay unset, so the model's PARAMETERs apply to them (Ollama forces
    temperature and top_p to 1.0 on /v1 and so overrides its own Modelfiles).
    """
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    fields = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "seed": req.seed,
        "stop": stop,
        "num_predict": max_tokens,
        "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty,
    }
    if rewrites.seed_greedy and req.seed is not None:
        fields["temperature"] = 0.0
    return msgspec.structs.replace(req.options or Options(), **{k: v for k, v in fields.items() if v is not None})


def _content(m: schemas.Message, i: int) -> str | list[Any] | None:
    if m.content is None:
        if m.role == "assistant" and m.tool_calls:
            return None
        raise bad_request(f"messages[{i}]: content is required for role {m.role!r}")
    if isinstance(m.content, str):
        return m.content
    parts: list[Any] = []
    for part in m.content:
        if isinstance(part, schemas.ImagePart) and isinstance(part.image_url, str):
            part = schemas.ImagePart(schemas.ImageURL(part.image_url))
        parts.append(part)
    return parts


def _tool_calls(m: schemas.Message, i: int) -> list[schemas.ToolCall] | None:
    for call in m.tool_calls or ():
        try:
            msgspec.json.decode(call.function.arguments)
        except msgspec.DecodeError:
            raise bad_request(f"messages[{i}]: tool call arguments are not valid JSON: {call.function.arguments!r}") from None
    return m.tool_calls


def chat_messages(defaults: semantics.ModelDefaults, messages: list[schemas.Message]) -> list[wire.ChatMessage]:
    """The model's SYSTEM (unless the request starts with its own) and MESSAGEs, then the
    request's messages; `developer` is OpenAI's newer name for `system`."""
    out = []
    if defaults.system and messages[0].role not in ("system", "developer"):
        out.append(wire.ChatMessage("system", defaults.system))
    out.extend(wire.ChatMessage(role, content) for role, content in defaults.messages)
    for i, m in enumerate(messages):
        out.append(wire.ChatMessage(
            role="system" if m.role == "developer" else m.role,
            content=_content(m, i),
            reasoning_content=m.reasoning_content,
            tool_calls=_tool_calls(m, i),
            tool_call_id=m.tool_call_id,
            name=m.name,
        ))
    return out


def has_images(messages: list[schemas.Message]) -> bool:
    return any(
        isinstance(m.content, list) and any(isinstance(p, schemas.ImagePart) for p in m.content) for m in messages
    )


def response_format(fmt: schemas.ResponseFormat | None) -> dict[str, Any] | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.json_schema is None or fmt.json_schema.schema is None:
        raise bad_request("response_format json_schema needs json_schema.schema")
    return {"type": "json_schema", "json_schema": {"name": fmt.json_schema.name, "schema": fmt.json_schema.schema}}


def tool_choice(req: schemas.ChatCompletionRequest) -> str | dict[str, Any] | None:
    """`tool_choice` as llama-server enforces it (a grammar); a choice that can't be met is a 400."""
    choice = req.tool_choice
    if choice is None or choice in ("auto", "none"):
        return choice
    names = [t.function.name for t in req.tools or ()]
    if not names:
        raise bad_request(f"tool_choice {msgspec.json.encode(choice).decode()} needs tools")
    if isinstance(choice, str):
        return choice
    if choice.function.name not in names:
        raise bad_request(f"tool_choice names function {choice.function.name!r}, which is not in tools")
    return {"type": "function", "function": {"name": choice.function.name}}


def forced_tools(req: schemas.ChatCompletionRequest, native_tools: bool) -> list[schemas.Tool] | None:
    """The tools one of which must be called, when the request forces a call (`required` or a
    named function) and the model's chat template knows no tools, so llama-server can't
    enforce it: llamagate then enforces it with a grammar (see `tool_call_schema`)."""
    choice = tool_choice(req)
    if native_tools or choice in (None, "auto", "none"):
        return None
    tools = req.tools or []
    if isinstance(choice, dict):
        return [t for t in tools if t.function.name == choice["function"]["name"]]
    return tools


def tool_call_schema(tools: list[schemas.Tool]) -> dict[str, Any]:
    """The JSON schema of one call of one of `tools`: {"name": ..., "arguments": {...}}."""
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": t.function.name}, "arguments": t.function.parameters or {"type": "object"}},
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def tool_prompt(tools: list[schemas.Tool]) -> str:
    """What a model whose template knows no tools is told about them when it must call one."""
    listed = msgspec.json.encode([t.function for t in tools]).decode()
    return (f"You have these functions: {listed}\nCall one of them: answer with a JSON object "
            '{"name": <the function name>, "arguments": <its arguments as an object>}.')


def _with_tool_prompt(messages: list[wire.ChatMessage], tools: list[schemas.Tool]) -> list[wire.ChatMessage]:
    prompt = tool_prompt(tools)
    if messages[0].role == "system" and isinstance(messages[0].content, str):
        first = msgspec.structs.replace(messages[0], content=f"{messages[0].content}\n\n{prompt}")
        return [first, *messages[1:]]
    return [wire.ChatMessage("system", prompt), *messages]


def chat_request(
    req: schemas.ChatCompletionRequest, defaults: semantics.ModelDefaults, num_ctx: int, rewrites: Rewrites,
    forced: list[schemas.Tool] | None = None,
) -> wire.ChatRequest:
    """One upstream request (of `n`): llamagate asks for n choices by n requests, because
    llama-server answers n > 1 only with as many slots. With `forced` tools (see
    `forced_tools`) the answer is a JSON call that `forced_call` turns into a tool call."""
    if not req.messages:
        raise bad_request("messages must not be empty")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    messages = chat_messages(defaults, req.messages)
    tools: dict[str, Any] = {
        "response_format": response_format(req.response_format),
        "tools": req.tools,
        "tool_choice": tool_choice(req),
        "parallel_tool_calls": req.parallel_tool_calls,
    }
    if forced is not None:
        messages = _with_tool_prompt(messages, forced)
        schema = {"name": "tool_call", "schema": tool_call_schema(forced)}
        tools = {"response_format": {"type": "json_schema", "json_schema": schema}}
    return wire.ChatRequest(
        messages=messages,
        top_logprobs=req.top_logprobs,
        **_common(req, req.logprobs),
        **tools,
        **semantics.sampling(defaults, options(req, max_tokens, rewrites), num_ctx),
    )


def _common(req: schemas._Sampling, logprobs: bool | int | None) -> dict[str, Any]:
    """The fields chat and text completions send alike; a stream asks for its usage, which
    llamagate reports when the client asks for it (n answers add up to one usage)."""
    return {
        "stream": req.stream,
        "cache_prompt": True,
        "stream_options": wire.StreamOptions() if req.stream else None,
        "logit_bias": req.logit_bias,
        "logprobs": logprobs,
    }


def forced_call(content: str, call_id: str, delta: bool) -> msgspec.Raw | None:
    """The JSON a forced call's grammar produced as an assistant message (or, with `delta`, a
    stream delta) carrying one tool call; None if it is not a whole call (cut by max_tokens)."""
    try:
        call = msgspec.json.decode(content, type=schemas.ForcedCall)
    except msgspec.DecodeError:
        return None
    function = schemas.FunctionCall(call.name, msgspec.json.encode(call.arguments).decode())
    if delta:
        return msgspec.Raw(msgspec.json.encode(schemas.ToolCallDelta([schemas.IndexedToolCall(function, call_id)])))
    return msgspec.Raw(msgspec.json.encode(schemas.ToolCallMessage([schemas.ToolCall(function, call_id)])))


def content_of(raw: msgspec.Raw) -> str:
    """The text of an upstream message or delta."""
    return msgspec.json.decode(raw, type=wire.Delta).content or ""


def forced_choice(choice: wire.OpenAIChoice, call_id: str) -> wire.OpenAIChoice:
    """A whole answer to a forced call: its JSON as a tool call (as it is if cut short)."""
    message = forced_call(content_of(choice.message), call_id, delta=False)
    if message is None:
        return choice
    return msgspec.structs.replace(choice, message=message, finish_reason="tool_calls")


def forced_finish(content: str, reason: str, call_id: str) -> list[wire.OpenAIChoice]:
    """The end of a streamed forced call, whose text was held back: one delta with the tool
    call (or the text, if cut short), then the finish."""
    delta = forced_call(content, call_id, delta=True)
    if delta is None:
        delta = msgspec.Raw(msgspec.json.encode({"role": "assistant", "content": content}))
    else:
        reason = "tool_calls"
    return [wire.OpenAIChoice(delta=delta), wire.OpenAIChoice(delta=msgspec.Raw(b"{}"), finish_reason=reason)]


def prompts(req: schemas.CompletionRequest) -> list[str]:
    if req.echo:
        raise bad_request("echo is not supported")
    if req.prompt is None or req.prompt == []:
        raise bad_request("prompt is required")
    return [req.prompt] if isinstance(req.prompt, str) else req.prompt


def completion_request(
    req: schemas.CompletionRequest, prompt: str, defaults: semantics.ModelDefaults, num_ctx: int, rewrites: Rewrites
) -> wire.CompletionRequest | wire.InfillRequest:
    """A raw text completion, as OpenAI's /v1/completions means it (no chat template); with a
    `suffix`, a fill-in-the-middle request to llama-server's /infill."""
    sampling = semantics.sampling(defaults, options(req, req.max_tokens, rewrites), num_ctx)
    if req.suffix:
        if req.logprobs:
            raise bad_request("logprobs are not supported together with suffix")
        return wire.InfillRequest(input_prefix=prompt, input_suffix=req.suffix, stream=req.stream, cache_prompt=True,
                                   **sampling)
    return wire.CompletionRequest(prompt=prompt, **_common(req, req.logprobs), **sampling)


def infill_choice(chunk: wire.CompletionChunk) -> wire.OpenAIChoice:
    """A native /infill chunk as an OpenAI text choice."""
    reason = None
    if chunk.stop:
        reason = "length" if chunk.stop_type == "limit" else "stop"
    return wire.OpenAIChoice(text=chunk.content, finish_reason=reason)


def infill_usage(chunk: wire.CompletionChunk) -> wire.Usage | None:
    if chunk.timings is None:
        return None
    t = chunk.timings
    prompt = t.cache_n + t.prompt_n
    return wire.Usage(prompt, t.predicted_n, prompt + t.predicted_n)


# Answers -------------------------------------------------------------------------------------


def usage(parts: list[wire.Usage], n: int) -> schemas.Usage:
    """The usage of upstream answers made n per prompt: each prompt counted once."""
    prompt = sum(u.prompt_tokens for u in parts[::n])
    completion = sum(u.completion_tokens for u in parts)
    details = None
    if parts and parts[0].prompt_tokens_details is not None:
        cached = sum((u.prompt_tokens_details or {}).get("cached_tokens", 0) for u in parts[::n])
        details = {"cached_tokens": cached}
    return schemas.Usage(prompt, completion, prompt + completion, details)


def chat_choice(index: int, choice: wire.OpenAIChoice, rewrites: Rewrites) -> schemas.ChatChoice:
    return schemas.ChatChoice(index, choice.message, choice.logprobs,
                              finish_reason(choice.finish_reason, rewrites))


def chunk_choice(index: int, choice: wire.OpenAIChoice, rewrites: Rewrites) -> schemas.ChunkChoice:
    return schemas.ChunkChoice(index, choice.delta, choice.logprobs,
                               finish_reason(choice.finish_reason, rewrites))


def text_logprobs(raw: msgspec.Raw) -> schemas.TextLogprobs | None:
    """llama-server's per-token logprobs (chat's shape) as the legacy completions' lists; the
    offsets count from the start of the text they come with."""
    content = msgspec.json.decode(raw, type=wire.ChoiceLogprobs | None)
    if content is None or content.content is None:
        return None
    offsets, offset = [], 0
    for t in content.content:
        offsets.append(offset)
        offset += len(t.token)
    return schemas.TextLogprobs(
        tokens=[t.token for t in content.content],
        token_logprobs=[t.logprob for t in content.content],
        top_logprobs=[{p.token: p.logprob for p in t.top_logprobs} for t in content.content],
        text_offset=offsets,
    )


def text_choice(index: int, choice: wire.OpenAIChoice, rewrites: Rewrites) -> schemas.TextChoice:
    return schemas.TextChoice(index, choice.text or "", text_logprobs(choice.logprobs),
                              finish_reason(choice.finish_reason, rewrites))


def embedding_input(req: schemas.EmbeddingRequest) -> str | list[Any]:
    """A string, or a non-empty list of strings, of token ids, or of non-empty token-id lists."""
    value = req.input
    if isinstance(value, str):
        return value
    if value and (
        all(isinstance(x, str) for x in value)
        or all(isinstance(x, int) for x in value)
        or all(isinstance(x, list) and x for x in value)
    ):
        return value
    raise bad_request("invalid input: expected a string, or a list of strings, of token ids or of token-id lists")


def embedding(vector: list[float], dimensions: int | None, encoding_format: str) -> list[float] | str:
    """One vector: cut to `dimensions` and L2-normalised again (as OpenAI's shortened embeddings
    are), then floats or base64 of little-endian float32, as OpenAI sends them."""
    if dimensions is not None and dimensions < len(vector):
        vector = vector[:dimensions]
        norm = math.sqrt(sum(x * x for x in vector))
        if norm > 0:
            vector = [x / norm for x in vector]
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def rename_model(data: bytes, name: str) -> bytes:
    """A passed-through answer (or stream event) with the model named as the client asked: the
    `model` of the object itself, of its `response` (Responses events) or of its `message`
    (Anthropic's message_start). Anything else, JSON or not, passes unchanged."""
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data
    if not isinstance(obj, dict):
        return data
    for holder in (obj, obj.get("response"), obj.get("message")):
        if isinstance(holder, dict) and "model" in holder:
            holder["model"] = name
    return msgspec.json.encode(obj)


# Errors --------------------------------------------------------------------------------------

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def error(status: int, message: str, code: str | None = None) -> schemas.ErrorResponse:
    kind = _OPENAI_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return schemas.ErrorResponse(schemas.ErrorDetail(message, kind, None, code))


def anthropic_error(status: int, message: str) -> schemas.AnthropicError:
    kind = _ANTHROPIC_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return schemas.AnthropicError(error=schemas.AnthropicErrorDetail(kind, message))
