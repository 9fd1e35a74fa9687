"""A model's /api/show answer laid out as `ollama show` lays it out: the sections of `llamagate
show`, and of `/show info` in a `run` session."""

from __future__ import annotations

import json
from typing import Any

import click


def _section(title: str, rows: list[tuple[str, str]]) -> None:
    click.echo(f"  {title}")
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        click.echo(f"    {key.ljust(width)}    {value.strip()}".rstrip())
    click.echo()


def print_info(info: dict[str, Any], verbose: bool) -> None:
    """Model, Capabilities, Parameters, System and License; every metadata key with `verbose`."""
    mi, d = info["model_info"], info["details"]
    arch = mi.get("general.architecture", "")
    rows = [("architecture", arch), ("parameters", d.get("parameter_size", ""))]
    for key, label in (("context_length", "context length"), ("embedding_length", "embedding length")):
        if f"{arch}.{key}" in mi:
            rows.append((label, str(mi[f"{arch}.{key}"])))
    rows.append(("quantization", d.get("quantization_level", "")))
    if info.get("requires"):
        rows.append(("requires", info["requires"]))
    _section("Model", rows)
    if info.get("capabilities"):
        _section("Capabilities", [(c, "") for c in info["capabilities"]])
    if info.get("parameters"):
        _section("Parameters", [(key, value) for key, _, value in
                                (line.partition(" ") for line in info["parameters"].splitlines())])
    if info.get("system"):
        _section("System", [(line, "") for line in info["system"].splitlines()[:2]])
    if info.get("license"):
        _section("License", [(line, "") for line in info["license"].splitlines()[:2]])
    if verbose:
        _section("Metadata", [(k, json.dumps(v)) for k, v in mi.items()])
