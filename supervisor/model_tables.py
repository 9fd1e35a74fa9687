"""`[models."name:tag"]` tables of the config file: per-model load settings, checked when the file
is read, and the holder the scheduler reads them from at each load (swapped on SIGHUP)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from supervisor.durations import parse_keep_alive
from supervisor.errors import LlamagateError
from supervisor.names import ModelName

# llama.cpp's KV cache types (`llama-server --help`, --cache-type-k/-v, b11434).
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

# The llama-server flags `extra_args` may pass, each with whether it takes a value. The flags
# llamagate sets itself or decides per request (--host, --port, --model, --api-key, --ctx-size,
# --context-shift, --keep, the chat template and reasoning flags, …) are not here: a table changing
# them would break the runner's supervision, its key, or what requests ask for.
EXTRA_ARGS: dict[str, bool] = {
    "--load-mode": True, "--lazy-mode": True, "--batch-size": True, "--ubatch-size": True,
    "--threads-batch": True, "--rope-scaling": True, "--rope-scale": True, "--rope-freq-base": True,
    "--rope-freq-scale": True, "--yarn-orig-ctx": True, "--yarn-ext-factor": True, "--yarn-attn-factor": True,
    "--yarn-beta-slow": True, "--yarn-beta-fast": True, "--override-tensor": True, "--override-kv": True,
    "--split-mode": True, "--tensor-split": True, "--device": True, "--n-cpu-moe": True, "--n-cpu-ffn": True,
    "--numa": True, "--cache-reuse": True, "--prio": True, "--poll": True,
    "--ctx-checkpoints": True, "--fit": True, "--fit-target": True, "--fit-ctx": True, "--spec-type": True,
    "--cont-batching": False, "--no-cont-batching": False, "--kv-offload": False, "--no-kv-offload": False,
    "--repack": False, "--no-repack": False, "--cpu-moe": False, "--swa-full": False, "--no-warmup": False,
    "--check-tensors": False, "--no-op-offload": False, "--no-host": False,
}

_FORMS = {
    "num_parallel": "a whole number ≥ 1",
    "keep_alive": "e.g. 5m, 1h30m, -1 or a number of seconds",
    "num_ctx": "a whole number ≥ 1",
    "preload": "true or false",
    "threads": "a whole number ≥ 1",
    "gpu_layers": "a whole number ≥ -1",
    "flash_attention": "true or false",
    "cache_type_k": "one of " + ", ".join(CACHE_TYPES),
    "cache_type_v": "one of " + ", ".join(CACHE_TYPES),
    "draft_model": "a model name or the path of a .gguf file",
    "draft_max": "a whole number ≥ 1",
    "draft_min": "a whole number ≥ 0",
    "extra_args": "a list of llama-server arguments from: " + ", ".join(EXTRA_ARGS),
}


class ModelSettings(msgspec.Struct, frozen=True, omit_defaults=True):
    """One model's table; None leaves the server-wide setting (or llama-server's default)."""

    num_parallel: int | None = None
    keep_alive: float | None = None  # seconds; inf = forever
    num_ctx: int | None = None
    preload: bool = False
    threads: int | None = None
    gpu_layers: int | None = None
    flash_attention: bool | None = None
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    draft_model: str | None = None
    draft_max: int | None = None
    draft_min: int | None = None
    extra_args: tuple[str, ...] = ()


def _int(low: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("not a whole number")
        if value < low:
            raise ValueError("out of range")
        return value
    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("not a boolean")
    return value


def _keep_alive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("not a duration")
    try:
        return parse_keep_alive(value)
    except LlamagateError:
        raise ValueError("not a duration") from None


def _cache_type(value: Any) -> str:
    if value not in CACHE_TYPES:
        raise ValueError("not a KV cache type")
    return value


def _draft(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("not a string")
    if is_path(value):
        if not Path(value).expanduser().is_file():
            raise ValueError("no such file")
    else:
        try:
            ModelName.parse(value)
        except LlamagateError:
            raise ValueError("not a model name") from None
    return value


def _extra_args(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of strings")
    args = iter(value)
    for arg in args:
        flag, eq, _ = arg.partition("=")
        if flag not in EXTRA_ARGS or (eq and not EXTRA_ARGS[flag]):
            raise ValueError(f"{arg} is not allowed")
        if EXTRA_ARGS[flag] and not eq and next(args, None) is None:
            raise ValueError(f"{arg} needs a value")
    return tuple(value)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "num_parallel": _int(1), "keep_alive": _keep_alive, "num_ctx": _int(1), "preload": _bool,
    "threads": _int(1), "gpu_layers": _int(-1), "flash_attention": _bool, "cache_type_k": _cache_type,
    "cache_type_v": _cache_type, "draft_model": _draft, "draft_max": _int(1), "draft_min": _int(0),
    "extra_args": _extra_args,
}


def is_path(draft_model: str) -> bool:
    """Whether a draft_model names a file rather than a model of the store."""
    return draft_model.endswith(".gguf") or draft_model.startswith(("/", ".", "~"))


def table_key(name: str) -> str:
    """A model name as tables are looked up: Ollama's resolution (`smollm2` = `smollm2:latest`)."""
    return ModelName.parse(name).display.lower()


def given_fields(table: ModelSettings) -> list[str]:
    """The keys a table sets (those that differ from an empty table), for `llamagate config`."""
    defaults = ModelSettings()
    return [key for key in table.__struct_fields__ if getattr(table, key) != getattr(defaults, key)]


def parse_tables(raw: Any, source: str) -> dict[str, ModelSettings]:
    """The `[models]` table of the file at `source`, by `table_key`; a bad entry is a ValueError
    of one line naming it, the file and what is accepted."""
    if not isinstance(raw, dict):
        raise ValueError(f"models ({source}): not a table; expected [models.\"name:tag\"] tables")
    tables = {}
    for name, entries in raw.items():
        label = f"models.{json.dumps(name)}"
        try:
            key = table_key(name)
        except LlamagateError as e:
            raise ValueError(f"{label} ({source}): not a model name: {e.message}") from None
        if not isinstance(entries, dict):
            raise ValueError(f"{label} ({source}): not a table; expected keys {', '.join(_CHECKS)}")
        values = {}
        for field, value in entries.items():
            if field not in _CHECKS:
                raise ValueError(f"{label}.{field} ({source}): unknown key; expected one of {', '.join(_CHECKS)}")
            try:
                values[field] = _CHECKS[field](value)
            except ValueError as e:
                shown = f"{label}.{field}={json.dumps(value)} ({source})"
                raise ValueError(f"{shown}: {e}; expected {_FORMS[field]}") from None
        if key in tables:
            raise ValueError(f"{label} ({source}): a second table for {key}")
        tables[key] = ModelSettings(**values)
    return tables


class ModelTables:
    """The tables in force. Read at each load, so a reload (SIGHUP) applies from each model's next
    load on; a runner already loaded keeps what it was started with."""

    def __init__(self, tables: dict[str, ModelSettings]) -> None:
        self._tables = tables

    def of(self, name: ModelName) -> ModelSettings:
        return self._tables.get(name.display.lower(), _NONE)

    def items(self) -> list[tuple[str, ModelSettings]]:
        return list(self._tables.items())

    def replace(self, tables: dict[str, ModelSettings]) -> None:
        self._tables = tables


_NONE = ModelSettings()
