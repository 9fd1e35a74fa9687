"""llama.cpp RPC workers (`[rpc]`, `--rpc`): each one reached before a load. llama-server aborts
at the first worker it cannot reach, its reason among the loader's lines; reaching them first
answers the request with a 503 naming every worker that is down, at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from supervisor.errors import LlamagateError

# The worker's name in llama.cpp builds: ggml-rpc-server from 2026 on, rpc-server before.
RPC_SERVERS = ("ggml-rpc-server", "rpc-server")

_TIMEOUT = 2.0  # a worker on a private network answers in milliseconds


async def _unreachable(worker: str) -> str | None:
    """Why `host:port` can't be reached, or None when it accepts a connection."""
    host, _, port = worker.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), _TIMEOUT)
    except (OSError, ValueError) as e:
        return f"{worker} ({e})"
    except asyncio.TimeoutError:
        return f"{worker} (no answer in {_TIMEOUT:g} s)"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def check_workers(name: str, workers: tuple[str, ...]) -> None:
    down = [why for why in await asyncio.gather(*(_unreachable(w) for w in workers)) if why]
    if down:
        raise LlamagateError(503, f"RPC worker unreachable for {name}: {'; '.join(down)}; start it on its "
                                  "machine with `llamagate rpc-worker --host ADDRESS --port PORT`")


def rpc_server_of(llama_server: Path) -> Path | None:
    """The RPC worker binary of the build that `llama_server` belongs to; None without RPC."""
    return next((p for n in RPC_SERVERS if os.access(p := llama_server.with_name(n), os.X_OK)), None)
