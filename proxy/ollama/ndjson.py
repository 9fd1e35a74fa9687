"""What every Ollama route answers with: JSON objects, NDJSON streams, timestamps."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import msgspec
from litestar import Response
from litestar.response import Stream

from proxy.ollama import schemas
from supervisor.errors import LlamagateError

log = logging.getLogger("llamagate.ollama")

NDJSON = "application/x-ndjson"
JSON = "application/json; charset=utf-8"

encode = msgspec.json.Encoder().encode


_second: list = [-1, ""]  # the last second formatted, and its text: strftime once a second, not per chunk


def now_rfc3339() -> str:
    """UTC with nanoseconds and a Z, as Go's RFC3339Nano writes `created_at`."""
    seconds, ns = divmod(time.time_ns(), 1_000_000_000)
    if seconds != _second[0]:
        _second[:] = seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    frac = f"{ns:09d}".rstrip("0")
    return f"{_second[1]}.{frac}Z" if frac else f"{_second[1]}Z"


def json_response(obj: msgspec.Struct, status: int = 200) -> Response[bytes]:
    return Response(encode(obj), status_code=status, media_type=JSON)


def ndjson_stream(lines: AsyncIterator[bytes] | Iterable[bytes]) -> Stream:
    """Every streamed /api answer. `X-Accel-Buffering: no` makes an nginx in front pass each line
    on as it comes even where it was left buffering responses (nginx's default)."""
    return Stream(lines, status_code=200, media_type=NDJSON, headers={"X-Accel-Buffering": "no"})


async def ndjson(first: msgspec.Struct, rest: AsyncIterator[msgspec.Struct]) -> AsyncIterator[bytes]:
    try:
        yield encode(first) + b"\n"
        async for chunk in rest:
            yield encode(chunk) + b"\n"
    except LlamagateError as e:
        yield encode(schemas.ErrorResponse(e.message)) + b"\n"
    except Exception:
        log.exception("stream failed")
        yield encode(schemas.ErrorResponse("internal error while streaming the answer")) + b"\n"
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


async def respond(
    chunks: AsyncIterator[msgspec.Struct],
    stream: bool,
    merge: Callable[[AsyncIterator[Any]], Awaitable[msgspec.Struct]],
) -> Response[Any]:
    """One object, or NDJSON whose headers wait for the first chunk, so that a failure before
    the first token (a load error, a bad request upstream) still gets its real status."""
    if not stream:
        return json_response(await merge(chunks))
    first = await anext(chunks)
    return ndjson_stream(ndjson(first, chunks))


