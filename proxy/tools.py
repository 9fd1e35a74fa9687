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


def prompt(functions: list[Function], forced: bool) -> str:
    """What the model is told about the tools: that it must call one (`forced`), or may."""
    listed = msgspec.json.encode(functions).decode()
    if forced:
        return f"You have these functions: {listed}\nCall one of them: answer with a JSON object {_CALL_SHAPE}."
    return (f"You can call these functions: {listed}\nTo call one, answer with only a JSON object {_CALL_SHAPE}; "
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
    written = [f'{{"name": {msgspec.json.encode(name).decode()}, "arguments": {arguments or "{}"}}}'
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
