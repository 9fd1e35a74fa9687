"""Pure mappings between the OpenAI-compatible shapes and llama-server's: no I/O, table-tested.

llama-server speaks OpenAI itself, so most of a request passes through; what llamagate adds is
Ollama's model semantics (Modelfile SYSTEM/PARAMETER/MESSAGE, `options`, bounded generation,
`think` from reasoning efforts), the rewrites Ollama documents (see "Rewrites"), tools on models
whose template knows none (`proxy.tools`), and answers that name the model as asked.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from proxy.llama import wire
from proxy import semantics, tools
from proxy.openai import schemas
from proxy.semantics import Options
from supervisor.errors import bad_request

SYSTEM_FINGERPRINT = "fp_llamagate"


# Rewrites ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rewrites:
    """The card's rewrites of OpenAI's semantics, as Ollama documents them for /v1; each has a
    setting (Config.openai_seed_greedy, .openai_finish_stop, .openai_tool_calls_stop)."""

    # A request with `seed` runs at temperature 0 (LLAMAGATE_OPENAI_SEED_GREEDY).
    seed_greedy: bool = True
    # `finish_reason` "length" is "stop" (LLAMAGATE_OPENAI_FINISH_STOP).
    finish_stop: bool = True
    # `finish_reason` "tool_calls" is "stop" (LLAMAGATE_OPENAI_TOOL_CALLS_STOP). Off by default:
    # agent loops wait for "tool_calls", and Ollama sends it.
    tool_calls_stop: bool = False


def finish_reason(reason: str | None, rewrites: Rewrites) -> str | None:
    """llama-server's finish_reason as the client sees it; None (not finished yet) stays None."""
    if reason is None or reason == "stop":
        return reason
    rewrite = rewrites.tool_calls_stop if reason == "tool_calls" else rewrites.finish_stop
    return "stop" if rewrite else reason


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


def chat_messages(
    defaults: semantics.ModelDefaults, messages: list[schemas.Message], native_tools: bool = True
) -> list[wire.ChatMessage]:
    """The model's SYSTEM (unless the request starts with its own) and MESSAGEs, then the
    request's messages; `developer` is OpenAI's newer name for `system`. Where the template knows
    no tools, an assistant's calls are its content, written as the model is asked to write them."""
    out = []
    if defaults.system and messages[0].role not in ("system", "developer"):
        out.append(wire.ChatMessage("system", defaults.system))
    out.extend(wire.ChatMessage(role, content) for role, content in defaults.messages)
    for i, m in enumerate(messages):
        content, calls = _content(m, i), _tool_calls(m, i)
        if calls and not native_tools:
            written = tools.call_text([(c.function.name, c.function.arguments) for c in calls])
            content, calls = "\n".join(filter(None, [content if isinstance(content, str) else "", written])), None
        out.append(wire.ChatMessage(
            role="system" if m.role == "developer" else m.role,
            content=content,
            reasoning_content=m.reasoning or m.reasoning_content,
            tool_calls=calls,
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
    enforce it: llamagate then enforces it with a grammar (see `proxy.tools.call_schema`)."""
    choice = tool_choice(req)
    if native_tools or choice in (None, "auto", "none"):
        return None
    listed = req.tools or []
    if isinstance(choice, dict):
        return [t for t in listed if t.function.name == choice["function"]["name"]]
    return listed


def prompted_tools(req: schemas.ChatCompletionRequest, native_tools: bool) -> list[tools.Function] | None:
    """The tools llamagate tells the model about and reads its calls of, where the model's chat
    template knows no tools (llama-server then ignores them): the forced ones, or all of them
    unless `tool_choice` is "none"."""
    forced = forced_tools(req, native_tools)
    if forced is not None:
        return functions(forced)
    if native_tools or not req.tools or tool_choice(req) == "none":
        return None
    return functions(req.tools)


def functions(tool_list: list[schemas.Tool]) -> list[tools.Function]:
    return [tools.Function(t.function.name, t.function.description, t.function.parameters) for t in tool_list]


def chat_request(
    req: schemas.ChatCompletionRequest, defaults: semantics.ModelDefaults, num_ctx: int, rewrites: Rewrites,
    native_tools: bool = True, name: str = "", capabilities: list[str] = [],
) -> wire.ChatRequest:
    """One upstream request (of `n`): llamagate asks for n choices by n requests, because
    llama-server answers n > 1 only with as many slots. Where the template knows no tools
    (`native_tools` false), the tools are a system note (see `proxy.tools`), and a forced call
    is also a grammar: its answer is a JSON call that `prompted_call` turns into a tool call."""
    if not req.messages:
        raise bad_request("messages must not be empty")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    messages = chat_messages(defaults, req.messages, native_tools)
    fields: dict[str, Any] = {
        "response_format": response_format(req.response_format),
        "tools": req.tools,
        "tool_choice": tool_choice(req),
        "parallel_tool_calls": req.parallel_tool_calls,
    }
    forced = forced_tools(req, native_tools)
    prompted = prompted_tools(req, native_tools)
    if forced is not None:
        messages = tools.with_prompt(messages, functions(forced), forced=True)
        schema = {"name": "tool_call", "schema": tools.call_schema(functions(forced))}
        fields = {"response_format": {"type": "json_schema", "json_schema": schema}}
    elif prompted is not None:
        messages = tools.with_prompt(messages, prompted, forced=False)
        fields = {"response_format": fields["response_format"]}
    return wire.ChatRequest(
        messages=messages,
        top_logprobs=req.top_logprobs,
        chat_template_kwargs=semantics.think_kwargs(reasoning_think(req), name, capabilities),
        **_common(req, req.logprobs),
        **fields,
        **semantics.sampling(defaults, options(req, max_tokens, rewrites), num_ctx),
    )


def reasoning_think(req: schemas.ChatCompletionRequest) -> semantics.Think:
    """`reasoning.effort` (first) or `reasoning_effort` as Ollama's `think`, as Ollama maps
    them: "none" turns thinking off, OpenAI's tiers past Ollama's ends clamp to its nearest."""
    effort = req.reasoning.effort if req.reasoning is not None else req.reasoning_effort
    return responses_think(effort)


_EFFORTS: dict[str, semantics.Think] = {
    "none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max",
    "xhigh": "max", "ultra": "max",
}


def responses_think(effort: str | None) -> semantics.Think:
    """An effort as Ollama's `think`; none or "" leaves thinking at the template's default."""
    if not effort:
        return None
    if effort not in _EFFORTS:
        raise bad_request(f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", '
                          '"xhigh", "ultra", "max", or "none")')
    return _EFFORTS[effort]


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


def prompted_call(
    content: str, prompted: list[tools.Function], call_id: Callable[[], str], delta: bool
) -> msgspec.Raw | None:
    """An answer that is a call of prompted tools (see `proxy.tools`) as an assistant message
    (or, with `delta`, a stream delta) with its tool calls, each with a new `call_id()`; None if
    it is not one."""
    calls = tools.calls_in(content, prompted)
    if calls is None:
        return None
    made = [schemas.ToolCall(schemas.FunctionCall(c.name, msgspec.json.encode(c.arguments).decode()), call_id())
            for c in calls]
    if delta:
        indexed = [schemas.IndexedToolCall(c.function, c.id, index=i) for i, c in enumerate(made)]
        return msgspec.Raw(msgspec.json.encode(schemas.ToolCallDelta(indexed)))
    return msgspec.Raw(msgspec.json.encode(schemas.ToolCallMessage(made)))


def content_of(raw: msgspec.Raw) -> str:
    """The text of an upstream message or delta."""
    return msgspec.json.decode(raw, type=wire.Delta).content or ""


def prompted_choice(
    choice: wire.OpenAIChoice, prompted: list[tools.Function], call_id: Callable[[], str]
) -> wire.OpenAIChoice:
    """A whole answer where tools were prompted: its call as tool calls, or the answer as it is."""
    message = prompted_call(content_of(choice.message), prompted, call_id, delta=False)
    if message is None:
        return choice
    return msgspec.structs.replace(choice, message=message, finish_reason="tool_calls")


def prompted_finish(delta: msgspec.Raw) -> list[wire.OpenAIChoice]:
    """The end of a streamed answer that was a call: one delta with the calls, then the finish."""
    return [wire.OpenAIChoice(delta=delta), wire.OpenAIChoice(delta=msgspec.Raw(b"{}"), finish_reason="tool_calls")]


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


def with_reasoning(raw: msgspec.Raw) -> msgspec.Raw:
    """A message or delta with llama-server's `reasoning_content` named `reasoning`, Ollama's
    name for it on /v1 (Ollama sends no `reasoning_content`)."""
    if b'"reasoning_content"' not in bytes(raw):
        return raw
    obj = msgspec.json.decode(raw)
    obj = {("reasoning" if k == "reasoning_content" else k): v for k, v in obj.items()}
    return msgspec.Raw(msgspec.json.encode(obj))


def chat_choice(index: int, choice: wire.OpenAIChoice, rewrites: Rewrites) -> schemas.ChatChoice:
    return schemas.ChatChoice(index, with_reasoning(choice.message), choice.logprobs,
                              finish_reason(choice.finish_reason, rewrites))


def chunk_choice(index: int, choice: wire.OpenAIChoice, rewrites: Rewrites) -> schemas.ChunkChoice:
    return schemas.ChunkChoice(index, with_reasoning(choice.delta), choice.logprobs,
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


def with_template_kwargs(data: bytes, kwargs: dict[str, Any] | None) -> bytes:
    """A passed-through request (Responses) with `think`'s chat_template_kwargs added; the
    client's own chat_template_kwargs win. llama-server maps `reasoning.effort` only to the
    template's `reasoning_effort`, so "none" would not turn thinking off."""
    if not kwargs:
        return data
    obj = msgspec.json.decode(data)
    obj["chat_template_kwargs"] = {**kwargs, **(obj.get("chat_template_kwargs") or {})}
    return msgspec.json.encode(obj)


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
