"""The server's log: its level and its format, text for a terminal or one JSON object a line for
journald, Loki and the like. Records may carry `fields` (a dict), which JSON lines show as keys."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """`time` (UTC, ISO 8601), `level`, `logger`, `message`, the record's `fields`, and `exc_info`
    as text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def level_of(level: str | None, verbose: bool, env: Mapping[str, str]) -> str:
    """--log-level (or LLAMAGATE_LOG_LEVEL), else debug for -v or Ollama's OLLAMA_DEBUG, else info."""
    if level:
        return level
    debug = env.get("OLLAMA_DEBUG", "").strip().lower() not in ("", "0", "false")
    return "debug" if verbose or debug else "info"


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Our own traffic to the runners, at every request: never news, not even when debugging.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
