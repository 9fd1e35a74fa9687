"""The tables the commands print as `ollama` prints them (`list`, `ps`, `runtime list`), and the
ages in them; `run`'s /list prints `list`'s."""

from __future__ import annotations

import time
from datetime import datetime

import click

from proxy.cli.client import Client


def human_since(when: datetime) -> str:
    seconds = max(0.0, time.time() - when.timestamp())
    for unit, size in (("year", 31536000), ("month", 2592000), ("week", 604800), ("day", 86400),
                       ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{'About an' if unit == 'hour' and n == 1 else n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a minute ago" if seconds >= 1 else "Less than a second ago"


def table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("    ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def print_models(client: Client, prefix: str) -> None:
    """`list`'s table, also `run`'s /list: the models whose name starts with `prefix`, in any case."""
    from proxy.cli.progress import human_bytes

    models = client.request("GET", "/api/tags").json()["models"]
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in models:
        if m["name"].lower().startswith(prefix.lower()):
            modified = datetime.fromisoformat(m["modified_at"])
            rows.append([m["name"], m["digest"][:12], human_bytes(m["size"]), human_since(modified)])
    table(rows)
