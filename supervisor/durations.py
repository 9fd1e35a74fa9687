"""Durations as Ollama reads and writes them: Go's `time.ParseDuration` strings and plain numbers of seconds."""

from __future__ import annotations

import math
import re

from supervisor.errors import bad_request

FOREVER = math.inf

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string such as "5m", "1h30m", "-1s", "300ms" or "0"."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-")
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    for m in _PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise bad_request(f'time: invalid duration "{text}"')
    return sign * total


def request_keep_alive(value: str | int | float | None) -> float | None:
    """A request's keep_alive in seconds; None when absent, so the runner's sticky one applies."""
    return None if value is None else parse_keep_alive(value)


def parse_keep_alive(value: str | int | float) -> float:
    """A keep_alive in seconds: numbers are seconds, strings Go durations, negative is forever."""
    if isinstance(value, bool):
        raise bad_request("Unsupported type: 'bool'")
    seconds = float(value) if isinstance(value, (int, float)) else parse_go_duration(value)
    return FOREVER if seconds < 0 else seconds


def _fraction(value: int, digits: int) -> str:
    whole, rest = divmod(value, 10**digits)
    tail = f"{rest:0{digits}d}".rstrip("0")
    return f"{whole}.{tail}" if tail else str(whole)


def format_go_duration(ns: int) -> str:
    """Nanoseconds as Go's `time.Duration.String` writes them ("1.5s", "2m0.25s", "350.2ms"),
    the way `ollama run --verbose` prints its timings."""
    sign, u = ("-" if ns < 0 else ""), abs(ns)
    if u == 0:
        return "0s"
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_fraction(u, 3)}µs"
    if u < 1_000_000_000:
        return f"{sign}{_fraction(u, 6)}ms"
    minutes, rest = divmod(u, 60_000_000_000)
    text = f"{_fraction(rest, 9)}s"
    if minutes:
        hours, minutes = divmod(minutes, 60)
        text = f"{hours}h{minutes}m{text}" if hours else f"{minutes}m{text}"
    return sign + text
