"""Pure mappings between Ollama's native shapes and llama-server's: no I/O, table-tested."""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any

import msgspec

from proxy.llama import wire
from proxy.ollama import schemas
from proxy import tools
from proxy.semantics import SAMPLING_FIELDS, ModelDefaults, sampling, think_kwargs
from supervisor.errors import bad_request, server_error
from supervisor.models.gguf import TensorInfo


def response_format(fmt: schemas.Format) -> dict[str, Any] | None:
    """`format`: "" or absent → none, "json" → any JSON object, an object → that JSON schema."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": fmt}}
    raise bad_request(f'invalid format: {msgspec.json.encode(fmt).decode()}; expected "json" or a valid JSON Schema object')


_IMAGE_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def image_part(data: str) -> dict[str, Any]:
    """A bare base64 image as the `image_url` content part llama-server's projector path takes,
    its MIME type sniffed from the bytes (Ollama's wire carries none)."""
    if data.startswith("data:"):
        raise bad_request("invalid image: send bare base64 without a data: prefix")
    try:
        head = base64.b64decode(data[:64].encode() + b"=" * (-len(data[:64]) % 4), validate=True)
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(f"invalid image: not base64 ({e})") from e
    mime = next((m for magic, m in _IMAGE_TYPES if head.startswith(magic)), "")
    if not mime and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        mime = "image/webp"
    return {"type": "image_url", "image_url": {"url": f"data:{mime or 'image/jpeg'};base64,{data}"}}


def _arguments(args: dict[str, Any] | str) -> str:
    """Tool-call arguments as llama-server's templates expect them: a JSON string."""
    return args if isinstance(args, str) else msgspec.json.encode(args).decode()


def chat_message(m: schemas.Message, native_tools: bool = True) -> wire.ChatMessage:
    """One message; where the template knows no tools, an assistant's calls are its content,
    written as the model is asked to write them (see `proxy.tools`)."""
    text = m.content or ""
    if m.tool_calls and not native_tools:
        written = tools.call_text([(c.function.name, _arguments(c.function.arguments)) for c in m.tool_calls])
        text = "\n".join(filter(None, [text, written]))
    content: str | list[Any] = text
    if m.images:
        content = [{"type": "text", "text": text}, *(image_part(i) for i in m.images)]
    tool_calls = None
    if m.tool_calls and native_tools:
        tool_calls = [
            {"id": c.id or f"call_{i}", "type": "function",
             "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
            for i, c in enumerate(m.tool_calls)
        ]
    return wire.ChatMessage(
        m.role.lower(),
        content,
        reasoning_content=m.thinking or None,
        tool_calls=tool_calls,
        tool_call_id=m.tool_call_id or None,
        name=m.tool_name or None,
    )


def chat_messages(
    defaults: ModelDefaults, messages: list[schemas.Message], native_tools: bool = True
) -> list[wire.ChatMessage]:
    """The model's SYSTEM (unless the request starts with its own) and MESSAGEs, then the request's."""
    out = []
    if defaults.system and not (messages and messages[0].role == "system"):
        out.append(wire.ChatMessage("system", defaults.system))
    out.extend(wire.ChatMessage(role, content) for role, content in defaults.messages)
    out.extend(chat_message(m, native_tools) for m in messages)
    return out


def require(capability: str, what: str, name: str, capabilities: list[str]) -> None:
    if capability not in capabilities:
        raise bad_request(f'"{name}" does not support {what}')


def top_logprobs(logprobs: bool, top: int) -> int | None:
    """The number of alternatives per token to ask for; None when logprobs are off."""
    if not 0 <= top <= 20:
        raise bad_request("top_logprobs must be between 0 and 20")
    return top if logprobs or top else None


class _Tool(msgspec.Struct):
    function: tools.Function


def prompted_tools(req: schemas.ChatRequest, capabilities: list[str]) -> list[tools.Function] | None:
    """The tools llamagate tells the model about and reads its calls of (see `proxy.tools`),
    where the model's chat template knows no tools (llama-server then ignores them)."""
    if not req.tools or "tools" in capabilities:
        return None
    try:
        return [t.function for t in msgspec.convert(req.tools, list[_Tool])]
    except msgspec.ValidationError as e:
        raise bad_request(f"invalid tools: {e}") from None


def chat_request(
    req: schemas.ChatRequest, defaults: ModelDefaults, num_ctx: int, name: str = "", capabilities: list[str] = []
) -> wire.ChatRequest:
    """Images and `think` are checked against the model's capabilities (from its GGUF); tools go
    to llama-server where the template knows them, else into a system note (`prompted_tools`)."""
    messages = req.messages or []
    if any(m.images for m in messages):
        require("vision", "images", name, capabilities)
    top = top_logprobs(req.logprobs, req.top_logprobs)
    prompted = prompted_tools(req, capabilities)
    wire_messages = chat_messages(defaults, messages, native_tools=prompted is None)
    if prompted is not None:
        wire_messages = tools.with_prompt(wire_messages, prompted, forced=False)
    return wire.ChatRequest(
        stream=True, cache_prompt=True,
        messages=wire_messages,
        response_format=response_format(req.format),
        tools=req.tools if prompted is None and req.tools else None,
        chat_template_kwargs=think_kwargs(req.think, name, capabilities),
        logprobs=True if top is not None else None,
        top_logprobs=top or None,
        **sampling(defaults, req.options, num_ctx),
    )


def tool_calls(pieces: dict[int, tuple[str, str, list[str]]], truncated: bool = False) -> list[schemas.OutToolCall]:
    """Tool calls assembled from llama-server's streamed pieces ({index: (id, name, argument
    pieces)}), with their arguments decoded into the JSON object Ollama's wire carries. A call
    cut short by the token limit (`truncated`) is dropped; otherwise bad JSON is an error."""
    out = []
    for index in sorted(pieces):
        call_id, name, parts = pieces[index]
        text = "".join(parts).strip() or "{}"
        try:
            arguments = msgspec.json.decode(text)
        except msgspec.DecodeError as e:
            if truncated:
                continue
            raise server_error(f"the model called {name} with arguments that are not JSON: {text!r}") from e
        if not isinstance(arguments, dict):
            arguments = {"value": arguments}
        out.append(schemas.OutToolCall(call_id, schemas.ToolCallFunction(name, arguments, index)))
    return out


def logprobs(tokens: list[wire.TokenProb] | None) -> list[schemas.Logprob] | None:
    if not tokens:
        return None
    return [
        schemas.Logprob(
            t.token, t.logprob, t.bytes,
            [schemas.TopLogprob(a.token, a.logprob, a.bytes) for a in t.top_logprobs] or None,
        )
        for t in tokens
    ]


def _json_schema(f: dict[str, Any] | None) -> dict[str, Any] | None:
    """A chat `response_format` as /completion's json_schema ("json" is any object)."""
    if f is None:
        return None
    return f["json_schema"]["schema"] if f["type"] == "json_schema" else {"type": "object"}


_GO_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
_GO_VALUES = {".System", ".Prompt", ".Response"}


def render_template(template: str, system: str, prompt: str) -> str:
    """A request's Go `template` in the common forms: `{{ .System }}`, `{{ .Prompt }}`,
    `{{ .Response }}` (empty: the answer follows), `{{ if .X }}…{{ else }}…{{ end }}` and the
    `{{-`/`-}}` trims. Ollama runs Go's text/template; anything beyond these forms is a 400."""
    values = {".System": system, ".Prompt": prompt, ".Response": ""}
    out: list[str] = []
    stack: list[tuple[bool, bool]] = []  # (this branch shown, the enclosing one shown)
    pos = 0
    trim_next = False
    for m in _GO_ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if all(shown for shown, _ in stack):
            out.append(text)
        action = m.group(2)
        if action in _GO_VALUES:
            if all(shown for shown, _ in stack):
                out.append(values[action])
        elif action.startswith("if ") and action[3:].strip() in _GO_VALUES:
            outer = all(shown for shown, _ in stack)
            stack.append((bool(values[action[3:].strip()]), outer))
        elif action == "else" and stack:
            shown, outer = stack.pop()
            stack.append((not shown, outer))
        elif action == "end" and stack:
            stack.pop()
        else:
            raise bad_request(f"unsupported template: llamagate runs only the common forms of Ollama's "
                              f"templates ({{{{ .System }}}}, {{{{ .Prompt }}}}, {{{{ if .System }}}}…{{{{ end }}}}), "
                              f"not {{{{ {action} }}}}")
        pos = m.end()
        trim_next = bool(m.group(3))
    if stack:
        raise bad_request("unsupported template: an {{ if }} without its {{ end }}")
    tail = template[pos:]
    out.append(tail.lstrip() if trim_next else tail)
    return "".join(out)


def generate_request(
    req: schemas.GenerateRequest, defaults: ModelDefaults, num_ctx: int, name: str = "", capabilities: list[str] = []
) -> wire.ChatRequest | wire.CompletionRequest | wire.InfillRequest:
    """Raw prompts and `template` overrides go to /completion as text; a `suffix` to /infill
    (fill-in-the-middle); the others are rendered by the model's chat template as a one-turn
    chat, which is what Ollama's template does with them. A `context` from an earlier answer
    needs the prompt as tokens: see `with_context`."""
    options = sampling(defaults, req.options, num_ctx)
    top = top_logprobs(req.logprobs, req.top_logprobs)
    n_probs = None if top is None else max(top, 1)
    if req.images:
        require("vision", "images", name, capabilities)
    if req.raw:
        if req.system or req.template or req.context:
            raise bad_request("raw mode does not support template, system, or context")
    if req.suffix:
        require("insert", "insert", name, capabilities)
        return wire.InfillRequest(stream=True, cache_prompt=True, input_prefix=req.prompt, input_suffix=req.suffix, n_probs=n_probs, **options)
    if req.raw or req.template:
        if req.images:
            raise bad_request("images need the model's chat template: drop raw and template")
        prompt = req.prompt if req.raw else render_template(req.template or "", req.system or defaults.system, req.prompt)
        return wire.CompletionRequest(stream=True, cache_prompt=True, prompt=prompt, json_schema=_json_schema(response_format(req.format)), n_probs=n_probs, **options)
    messages = [schemas.Message("user", req.prompt, images=req.images)]
    if req.system:
        messages.insert(0, schemas.Message("system", req.system))
    return wire.ChatRequest(
        stream=True, cache_prompt=True,
        messages=chat_messages(defaults, messages),
        response_format=response_format(req.format),
        chat_template_kwargs=think_kwargs(req.think, name, capabilities),
        logprobs=True if top is not None else None,
        top_logprobs=top or None,
        **options,
    )


def with_context(chat: wire.ChatRequest, rendered: str, context: list[int]) -> wire.CompletionRequest:
    """A chat-path generate as /completion of the prompt the model's template rendered, after
    the request's `context` tokens if it has any (/completion takes such a mix); it answers with
    the ids of the tokens it generates, which become the answer's `context`."""
    sampling_fields = {k: getattr(chat, k) for k in SAMPLING_FIELDS}
    return wire.CompletionRequest(
        stream=True, cache_prompt=True, prompt=[*context, rendered] if context else rendered,
        json_schema=_json_schema(chat.response_format),
        n_probs=None if chat.top_logprobs is None and not chat.logprobs else max(chat.top_logprobs or 0, 1),
        return_tokens=True, **sampling_fields,
    )


# Fitting num_ctx (`truncate`, `shift`) ----------------------------------------------------------


def shifted_prompt(tokens: list[int], num_ctx: int, num_keep: int, bos: int) -> list[int]:
    """A prompt too long for num_ctx as Ollama cuts it when context shift is on: its first
    num_keep tokens (all for -1, plus the BOS), then its end, as much as leaves half of the rest
    of the context free for the answer, as a first context shift would."""
    if len(tokens) < num_ctx:
        return tokens
    keep = len(tokens) if num_keep < 0 else num_keep + bos
    keep = max(0, min(keep, num_ctx - 1))
    limit = num_ctx - max((num_ctx - keep) // 2, 1)
    return tokens[:keep] + tokens[len(tokens) - (limit - keep):]


def normalize(vector: list[float], dimensions: int = 0) -> list[float]:
    """L2-normalised, after cutting to `dimensions` when 0 < dimensions < its length."""
    if 0 < dimensions < len(vector):
        vector = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in vector))
    if not math.isfinite(norm):
        raise server_error("embedding contains NaN or Inf values")
    return [x / norm for x in vector] if norm > 0 else vector


def done_reason(reason: str | None) -> str:
    """llama-server's finish_reason (chat) or stop_type (completion) as Ollama's done_reason."""
    return "length" if reason in ("length", "limit") else "stop"


def metrics(timings: wire.Timings | None, total_ns: int, load_ns: int) -> dict[str, int]:
    """The final chunk's counters; prompt_eval_count includes the cached prompt tokens."""
    t = timings or wire.Timings()
    return {
        "total_duration": total_ns,
        "load_duration": load_ns,
        "prompt_eval_count": t.cache_n + t.prompt_n,
        "prompt_eval_duration": int(t.prompt_ms * 1e6),
        "eval_count": t.predicted_n,
        "eval_duration": int(t.predicted_ms * 1e6),
    }


# /api/show ------------------------------------------------------------------------------------

_HIDDEN_KEYS = {"general.name", "tokenizer.chat_template"}


def model_info(metadata: dict[str, Any], parameter_count: int, verbose: bool, name: str = "") -> dict[str, Any]:
    """GGUF metadata as /api/show's model_info: long arrays (the vocabulary) are `[]` unless
    verbose, as Ollama shows them; the name and chat template are left out, as Ollama does."""
    info: dict[str, Any] = {}
    for key, value in metadata.items():
        if key in _HIDDEN_KEYS:
            continue
        if isinstance(value, list) and len(value) > 5 and not verbose or not isinstance(value, (str, int, float, bool, list)):
            value = []
        info[key] = value
    info.setdefault("general.parameter_count", parameter_count)
    if name:
        info.setdefault("general.basename", name)
    return dict(sorted(info.items()))


def shown_template(jinja: str, capabilities: list[str]) -> str:
    """The GGUF's Jinja chat template as /api/show's `template`, headed by a Go comment naming
    `.Tools` and `.Suffix` when the model takes them: clients look for those names in Ollama's
    Go templates (LiteLLM for tools, Continue for fill-in-the-middle)."""
    takes = [name for cap, name in (("tools", ".Tools"), ("insert", ".Suffix")) if cap in capabilities]
    if not takes:
        return jinja
    return f"{{{{/* llamagate renders this Jinja template; the model takes {' and '.join(takes)} */}}}}\n{jinja}"


# A template's default effort (gpt-oss: `reasoning_effort | default("medium")`), and a template that
# thinks only when asked (`enable_thinking is defined and enable_thinking is true`, `| default(false)`).
_EFFORT_DEFAULT = re.compile(r"reasoning_effort\s*\|\s*default\(\s*['\"](\w+)")
_THINKS_WHEN_ASKED = re.compile(r"enable_thinking\s*(?:is\s+true|==\s*true|\|\s*default\(\s*false)", re.IGNORECASE)
_LEVELS: list[bool | str] = ["low", "medium", "high"]


def thinking(jinja: str, capabilities: list[str]) -> schemas.Thinking | None:
    """/api/show's `thinking`, read from the chat template: the levels of a template that takes
    `reasoning_effort` (gpt-oss), else on and off, each with the template's own default; None
    for a model that can't think."""
    if "thinking" not in capabilities:
        return None
    if "reasoning_effort" in jinja:
        m = _EFFORT_DEFAULT.search(jinja)
        default = m.group(1) if m and m.group(1) in _LEVELS else "medium"
        return schemas.Thinking(_LEVELS, default)
    return schemas.Thinking([True, False], not _THINKS_WHEN_ASKED.search(jinja))


def tensors(info: list[TensorInfo]) -> list[schemas.Tensor]:
    return [schemas.Tensor(t.name, t.type, list(t.shape)) for t in info]


def _go_quote(value: Any) -> str:
    return msgspec.json.encode(value).decode() if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def parameters_text(params: dict[str, Any]) -> str:
    """The `parameters` string: one `key value` line each (key padded to 30), strings quoted,
    `stop` repeated once per value, as clients such as Continue parse it."""
    lines = []
    for key, value in params.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {_go_quote(v)}")
    return "\n".join(lines)


def modelfile_text(name: str, model_path: str, *, template: str, system: str, params: dict[str, Any],
                   messages: list[tuple[str, str]], licenses: list[str], projector: str, adapters: list[str],
                   draft: str = "", renderer: str = "", parser: str = "") -> str:
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {name}",
        "",
        f"FROM {model_path}",
    ]
    lines += [f"FROM {projector}"] if projector else []
    lines += [f"ADAPTER {p}" for p in adapters]
    lines += [f"DRAFT {draft}"] if draft else []
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"RENDERER {renderer}"] if renderer else []
    lines += [f"PARSER {parser}"] if parser else []
    for key, value in params.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {v}")
    lines += [f"MESSAGE {role} {content}" for role, content in messages]
    lines += [f'LICENSE """{text}"""' for text in licenses]
    return "\n".join(lines) + "\n"
