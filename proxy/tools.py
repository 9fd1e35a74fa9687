"""Tools on models whose chat template knows none, for both dialects: llama-server then ignores
`tools`, so llamagate lists them in a system note and reads a call from the model's answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from proxy.llama import wire


class Function(msgspec.Struct, omit_defaults=True):
    """A tool the model may call, as both dialects define one (`tools[].function`)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Call(msgspec.Struct):
    """A call as the system note asks the model to write it."""

    name: str
    arguments: dict[str, Any]


def call_schema(functions: list[Function]) -> dict[str, Any]:
    """The JSON schema of one call of one of `functions`: {"name": ..., "arguments": {...}}."""
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": f.name}, "arguments": f.parameters or {"type": "object"}},
            "required": ["name", "arguments"],
        }
        for f in functions
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


_CALL_SHAPE = '{"name": <the function name>, "arguments": <its arguments as an object>}'


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# Schemas of variants, and what joins them in a type.
_VARIANTS = {"anyOf": "|", "oneOf": "|", "allOf": "&"}


def _type(schema: Any, defs: dict[str, Any], seen: frozenset[str]) -> str:
    """A JSON schema written short, as TypeScript writes a type: `string`, `"a"|"b"`,
    `integer[]`, `{city: string, days?: integer = 0}`; a `$ref` is written out once (then named)."""
    if not isinstance(schema, dict):
        return "any"
    if isinstance(ref := schema.get("$ref"), str):
        name = ref.rsplit("/", 1)[-1]
        return name if name in seen or name not in defs else _type(defs[name], defs, seen | {name})
    if "const" in schema:
        return _json(schema["const"])
    if isinstance(schema.get("enum"), list):
        return "|".join(_json(v) for v in schema["enum"])
    for key, joint in _VARIANTS.items():
        if isinstance(schema.get(key), list):
            return joint.join(_type(s, defs, seen) for s in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return "|".join(_type({**schema, "type": k}, defs, seen) for k in kind)
    if kind == "array":
        items = _type(schema.get("items"), defs, seen)
        return f"{items}[]" if _single(schema.get("items")) else f"({items})[]"
    if isinstance(schema.get("properties"), dict) and schema["properties"]:
        return f"{{{_fields(schema, defs, seen)}}}"
    return kind if isinstance(kind, str) else "any"


def _single(schema: Any) -> bool:
    """Whether `schema` is written as one type (not `a|b`), so `[]` may follow it bare."""
    if not isinstance(schema, dict):
        return True
    many = [schema.get(k) for k in ("enum", "type", *_VARIANTS)]
    return not any(isinstance(v, list) and len(v) > 1 for v in many)


def _fields(schema: dict[str, Any], defs: dict[str, Any], seen: frozenset[str]) -> str:
    """An object's properties as `name: type`, `name?: type` where not required, `= default`."""
    # Schemas are the client's, unchecked: a part of the wrong shape is left out, never a 500.
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    written = []
    for name, prop in properties.items():
        field = f"{name}{'' if name in required else '?'}: {_type(prop, defs, seen)}"
        if isinstance(prop, dict) and "default" in prop:
            field += f" = {_json(prop['default'])}"
        written.append(field)
    return ", ".join(written)


def signature(function: Function) -> str:
    """One line of the note: `name(parameters): description`. Every name, type, enum, default and
    requirement is there; what the parameters' schemas say in words is not, since clients send
    dozens of tools (Open WebUI's built-in ones are 26 kB of JSON), and their whole schemas
    would overflow a small context before the chat begins."""
    params = function.parameters or {}
    defs = {name: schema for key in ("definitions", "$defs") if isinstance(params.get(key), dict)
            for name, schema in params[key].items()}
    line = f"{function.name}({_fields(params, defs, frozenset())})"
    description = " ".join((function.description or "").split())
    return f"{line}: {description}" if description else line


def prompt(functions: list[Function], forced: bool) -> str:
    """What the model is told about the tools: that it must call one (`forced`), or may."""
    listed = "\n".join(f"- {signature(f)}" for f in functions)
    if forced:
        return f"You have these functions:\n{listed}\nCall one of them: answer with a JSON object {_CALL_SHAPE}."
    return (f"You can call these functions:\n{listed}\nTo call one, answer with only a JSON object {_CALL_SHAPE}; "
            "otherwise answer as usual.")


def with_prompt(messages: list[wire.ChatMessage], functions: list[Function], forced: bool) -> list[wire.ChatMessage]:
    """The messages with the note about the tools added to their system message (or first)."""
    note = prompt(functions, forced)
    if messages and messages[0].role == "system" and isinstance(messages[0].content, str):
        first = msgspec.structs.replace(messages[0], content=f"{messages[0].content}\n\n{note}")
        return [first, *messages[1:]]
    return [wire.ChatMessage("system", note), *messages]


def call_text(calls: list[tuple[str, str]]) -> str:
    """An assistant's earlier calls ((name, arguments JSON)) as the model was asked to write them,
    since a template that knows no tools renders only the content of the message."""
    written = [f'{{"name": {_json(name)}, "arguments": {arguments or "{}"}}}'
               for name, arguments in calls]
    return "\n".join(written)


def calls_in(text: str, functions: list[Function]) -> list[Call] | None:
    """The calls an answer makes: a whole answer that is one call object (or a list of them) of
    known functions; None when it is anything else (text, other JSON, a call cut short)."""
    try:
        value = msgspec.json.decode(text.strip())
    except msgspec.DecodeError:
        return None
    names = {f.name for f in functions}
    try:
        calls = msgspec.convert(value if isinstance(value, list) else [value], list[Call])
    except msgspec.ValidationError:
        return None
    if not calls or any(c.name not in names for c in calls):
        return None
    return calls


@dataclass
class Reader:
    """Reads a streamed answer for a call: text that can't start one passes at once, an answer
    that starts like a JSON object is held back until its end (then a call, or text after all)."""

    functions: list[Function]
    text: list[str] = field(default_factory=list)
    passing: bool = False

    def holds(self, content: str) -> bool:
        """Whether the answer, `content` added, must still be held back."""
        if self.passing:
            return False
        self.text.append(content)
        start = "".join(self.text).lstrip()
        self.passing = bool(start) and not start.startswith("{")
        return not self.passing

    def calls(self) -> list[Call] | None:
        """At the end: the calls of a held-back answer, if it is one."""
        return None if self.passing else calls_in("".join(self.text), self.functions)
