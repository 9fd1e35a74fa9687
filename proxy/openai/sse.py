"""OpenAI's answers: JSON objects, and SSE streams whose headers wait for the first event and
whose failures become error events; plus running one upstream request per choice at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any, TypeVar

import msgspec
from litestar import Response
from litestar.response import Stream

from proxy.openai import translate
from supervisor.errors import LlamagateError

log = logging.getLogger("llamagate.openai")

SSE = "text/event-stream"
JSON = "application/json"
encode = msgspec.json.Encoder().encode
T = TypeVar("T")


def json_answer(obj: msgspec.Struct, status: int = 200) -> Response[bytes]:
    return Response(encode(obj), status_code=status, media_type=JSON)


async def all_results(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Every result, or the first failure with the other calls cancelled; cancelled itself (its
    client left), it returns once every call has closed its upstream request."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks)


_END = object()


async def fan_in(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """The items of several streams as they come, each with its stream's index; the first
    failure ends it all (and closing it closes every stream, freeing their slots)."""
    if len(streams) == 1:
        # The usual n == 1: no queue and task between each chunk and the client.
        try:
            async for item in streams[0]:
                yield 0, item
        finally:
            await streams[0].aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((i, item, None))
            await queue.put((i, _END, None))
        except Exception as e:
            await queue.put((i, None, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, item, error = await queue.get()
            if error is not None:
                raise error
            if item is _END:
                running -= 1
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        # asyncio.wait, not gather: a cancelled gather cancels its tasks again, and anyio cancels
        # the task of a request whose client is gone over and over, which would interrupt the
        # tasks' closing of their upstream connections (and leave llama-server generating).
        await asyncio.wait(tasks)


def sse_stream(events: AsyncIterator[bytes]) -> Stream:
    """Every streamed /v1 answer. `X-Accel-Buffering: no` makes an nginx in front pass each event
    on as it comes even where it was left buffering responses (nginx's default)."""
    return Stream(events, media_type=SSE, status_code=200,
                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse_event(data: bytes, event: str = "") -> bytes:
    return (f"event: {event}\n".encode() if event else b"") + b"data: " + data + b"\n\n"


async def _sse(first: msgspec.Struct, rest: AsyncIterator[msgspec.Struct]) -> AsyncIterator[bytes]:
    """OpenAI's stream: `data:` events, then `data: [DONE]`; a failure after the first event is
    a `data: {"error": ...}` event before the `[DONE]`, never a silently cut stream."""
    try:
        yield sse_event(encode(first))
        async for chunk in rest:
            yield sse_event(encode(chunk))
    except LlamagateError as e:
        yield sse_event(encode(translate.error(e.status, e.message, e.code)))
    except Exception:
        log.exception("stream failed")
        yield sse_event(encode(translate.error(500, "internal error while streaming the answer")))
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
    yield sse_event(b"[DONE]")


async def answer_stream(chunks: AsyncIterator[msgspec.Struct]) -> Response[Any]:
    """Headers wait for the first chunk, so a failure before it (a load error, a context
    overflow) still gets its real status and error body."""
    first = await anext(chunks)
    return sse_stream(_sse(first, chunks))
