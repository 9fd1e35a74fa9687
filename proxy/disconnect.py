"""Clients that leave: an inference request whose client goes before its answer starts has its
work cancelled (its queue place, the load it waits for, its generation upstream)."""

from __future__ import annotations

import asyncio

from litestar.types import ASGIApp, Message, Receive, Scope, Send

# The routes that lease a model. Their answers wait for a load, for room or for the whole
# generation, and neither uvicorn nor Litestar (outside a streamed answer) tells a handler that
# its client left: without this, an abandoned request keeps its queue place and its slot.
INFERENCE = frozenset({
    "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/rerank", "/v1/rerank",
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
    "/v1/messages/count_tokens",
})


class _Watch:
    """The request's `receive`, which keeps listening once the body is read: the next message
    can only be `http.disconnect`, which arrives when the client goes or the answer is complete."""

    def __init__(self, receive: Receive, task: asyncio.Task[None]) -> None:
        self._receive = receive
        self._task = task
        self._listener: asyncio.Task[Message] | None = None
        self.answering = False  # the answer started: a streamed one watches for itself
        self.cancelled = False

    async def receive(self) -> Message:
        if self._listener is None:
            message = await self._receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                self._listener = asyncio.ensure_future(self._receive())
                self._listener.add_done_callback(self._heard)
            return message
        # Shielded: Litestar's streamed answers listen too, and cancel their listener when done.
        return await asyncio.shield(self._listener)

    def _heard(self, listener: asyncio.Task[Message]) -> None:
        if listener.cancelled() or listener.exception() is not None or self.answering:
            return
        if listener.result()["type"] == "http.disconnect":
            self.cancelled = True
            self._task.cancel()

    async def send(self, send: Send, message: Message) -> None:
        self.answering = True
        await send(message)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()


def watch_disconnect(app: ASGIApp) -> ASGIApp:
    """Litestar middleware: an inference request's handler is cancelled when its client leaves
    before the answer starts; from then on a streamed answer's own disconnect watch ends it."""

    async def watched(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in INFERENCE:
            await app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(receive, task)
        try:
            await app(scope, watch.receive, lambda message: watch.send(send, message))
        except asyncio.CancelledError:
            # Ours, and no other cancellation pending (a server shutting down): nobody to answer.
            if watch.cancelled and task.uncancel() == 0:
                return
            raise
        finally:
            watch.close()

    return watched
