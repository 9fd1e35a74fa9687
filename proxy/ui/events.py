"""GET /ui/events: the status page's live feed, a text/event-stream of JSON snapshots."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec

from proxy.gateway import Gateway
from proxy.ui.snapshot import snapshot

# The state lives with several owners (runners, scheduler, pulls) and none announces its
# changes: comparing a fresh snapshot a few times a second is cheap and misses none of them.
_LOOK_EVERY = 0.25
# At least this often even when nothing changed, so the page knows the feed is alive.
_SEND_EVERY = 1.0

_encode = msgspec.json.Encoder().encode


async def events(gate: Gateway) -> AsyncIterator[bytes]:
    """Snapshots as SSE events: one now, then each change, and one a second at least (the
    countdowns change every second anyway). Endless: it stops when the client leaves."""
    yield b"retry: 1000\n\n"
    last, sent_at = b"", 0.0
    while True:
        data = _encode(snapshot(gate))
        now = time.monotonic()
        if data != last or now - sent_at >= _SEND_EVERY:
            yield b"data: " + data + b"\n\n"
            last, sent_at = data, now
        await asyncio.sleep(_LOOK_EVERY)
