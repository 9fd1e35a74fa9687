"""The recent inference requests, for the status page: the last few hundred that finished, each
with its model, status, time and tokens (and so tokens/s), in memory only."""

from __future__ import annotations

import time
from collections import deque

import msgspec

from proxy.exchange import Exchange

KEPT = 200


class Record(msgspec.Struct, kw_only=True):
    """One finished inference request."""

    time: float  # when it ended, Unix seconds
    method: str
    route: str  # the path template, e.g. /api/chat
    model: str  # "" when it failed before a model was found
    status: int
    seconds: float  # from arrival to the end of the answer
    prompt_tokens: int
    generated_tokens: int
    # Generated tokens over llama-server's own generation time; None when it reported none.
    tokens_per_second: float | None = None


class Activity:
    """A ring of the last `KEPT` records, oldest first."""

    def __init__(self, kept: int = KEPT) -> None:
        self._records: deque[Record] = deque(maxlen=kept)

    def add(self, x: Exchange) -> None:
        self._records.append(Record(
            time=time.time(),
            method=x.method,
            route=x.route,
            model=x.model,
            status=x.status,
            seconds=round(x.seconds, 6),
            prompt_tokens=x.prompt_tokens,
            generated_tokens=x.generated_tokens,
            tokens_per_second=round(x.generated_tokens / x.generation_seconds, 2) if x.generation_seconds else None,
        ))

    def records(self) -> list[Record]:
        return list(self._records)
