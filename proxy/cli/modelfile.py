"""Modelfiles as `ollama create` reads them: FROM, PARAMETER, TEMPLATE, SYSTEM, MESSAGE, LICENSE,
RENDERER, PARSER and REQUIRES."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from proxy.ollama.schemas import Options

_COMMAND = re.compile(r"^\s*([A-Za-z]+)\s+(.*)$", re.DOTALL)
_ROLES = {"system", "user", "assistant", "tool"}
# A semantic version as Go's x/mod/semver takes it (the leading "v" optional here, as Ollama's
# parser adds it): MAJOR[.MINOR[.PATCH]], a pre-release and build only after all three.
_NUM = r"(?:0|[1-9][0-9]*)"
_IDS = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_SEMVER = re.compile(rf"v?{_NUM}(?:\.{_NUM}(?:\.{_NUM}(?:-{_IDS})?(?:\+{_IDS})?)?)?")


class ModelfileError(ValueError):
    pass


@dataclass
class Modelfile:
    from_: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    renderer: str = ""
    parser: str = ""
    requires: str = ""


def _instructions(text: str) -> list[tuple[str, str, int]]:
    """(command, argument, line) triples; an argument in triple quotes may span lines."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line, lineno = lines[i], i + 1
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _COMMAND.match(line)
        if not m:
            raise ModelfileError(f"line {lineno}: expected a command and an argument: {line.strip()!r}")
        command, arg = m.group(1).upper(), m.group(2).strip()
        if arg.startswith('"""'):
            body = arg[3:]
            while '"""' not in body:
                if i >= len(lines):
                    raise ModelfileError(f"line {lineno}: unterminated \"\"\"")
                body += "\n" + lines[i]
                i += 1
            arg = body[: body.index('"""')]
        elif len(arg) >= 2 and arg[0] == arg[-1] == '"':
            arg = arg[1:-1]
        out.append((command, arg, lineno))
    return out


def parameter(key: str, values: list[str]) -> Any:
    """One PARAMETER as its option's type (`stop` takes every value given), for a Modelfile's
    lines and `/set parameter` alike."""
    if key not in Options.__struct_fields__:
        raise ModelfileError(f"unknown parameter {key!r}")
    try:
        options = msgspec.convert({key: values if key == "stop" else values[0]}, Options, strict=False)
    except msgspec.ValidationError as e:
        raise ModelfileError(f"invalid PARAMETER: {e}") from None
    return getattr(options, key)


def parse(text: str) -> Modelfile:
    mf = Modelfile()
    for command, arg, lineno in _instructions(text):
        if command == "FROM":
            mf.from_ = arg
        elif command == "PARAMETER":
            key, _, value = arg.partition(" ")
            key, value = key.strip(), value.strip().strip('"')
            try:
                parsed = parameter(key, [value])
            except ModelfileError as e:
                raise ModelfileError(f"line {lineno}: {e}") from None
            if key == "stop":
                mf.parameters.setdefault("stop", []).extend(parsed)
            else:
                mf.parameters[key] = parsed
        elif command == "TEMPLATE":
            mf.template = arg
        elif command == "SYSTEM":
            mf.system = arg
        elif command == "MESSAGE":
            role, _, content = arg.partition(" ")
            if role not in _ROLES:
                raise ModelfileError(f"line {lineno}: MESSAGE role must be one of {sorted(_ROLES)}")
            mf.messages.append({"role": role, "content": content.strip()})
        elif command == "LICENSE":
            mf.license.append(arg)
        elif command == "RENDERER":
            mf.renderer = arg
        elif command == "PARSER":
            mf.parser = arg
        elif command == "REQUIRES":
            if not _SEMVER.fullmatch(arg):
                raise ModelfileError(f"line {lineno}: requires must be a valid semver (e.g. 0.14.0)")
            mf.requires = arg.removeprefix("v")
        else:
            raise ModelfileError(f"line {lineno}: unsupported command {command}")
    if not mf.from_:
        raise ModelfileError("no FROM line")
    return mf
