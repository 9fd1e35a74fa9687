"""Fitting a chat into num_ctx as Ollama does (`truncate`), for both dialects. Only a prompt
llama-server refuses as longer than the context pays for counting: the chat is then cut as
Ollama cuts it (oldest turns first, system messages and the last message kept, a tool result
never without its call) and sent once more on the same lease."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import msgspec

from proxy.llama import wire
from proxy.llama.lease import Lease
from supervisor.errors import LlamagateError

B = TypeVar("B")
T = TypeVar("T")

# llama-server's refusal of a prompt longer than the context, as the hop names it.
OVERFLOW = "context_length_exceeded"
Refit = Callable[[B], Awaitable[B | None]]


async def fitted(body: B, send: Callable[[B], AsyncIterator[T]], refit: Refit | None) -> AsyncIterator[T]:
    """What `send(body)` streams; if llama-server refuses the prompt as too long before the
    first item, what `send` streams of the body `refit` cuts it to (None, or no `refit`: the
    refusal stands)."""
    started = False
    try:
        async for item in send(body):
            started = True
            yield item
        return
    except LlamagateError as e:
        if started or e.code != OVERFLOW or refit is None:
            raise
        cut = await refit(body)
        if cut is None:
            raise
    async for item in send(cut):
        yield item


async def fitted_call(body: B, send: Callable[[B], Awaitable[T]], refit: Refit | None) -> T:
    """`fitted` for a whole answer."""
    try:
        return await send(body)
    except LlamagateError as e:
        if e.code != OVERFLOW or refit is None:
            raise
        cut = await refit(body)
        if cut is None:
            raise
    return await send(cut)


async def chat_tokens(lease: Lease, body: wire.ChatRequest, messages: list[wire.ChatMessage]) -> int:
    """How many tokens of the context `messages` take, rendered as `body` renders them."""
    plain, images = counted(messages)
    applied = await lease.post("/apply-template", wire.ApplyTemplateRequest(plain, body.chat_template_kwargs, body.tools),
                               wire.ApplyTemplateResponse)
    # add_special: llama-server counts the BOS it adds.
    tokens = await lease.post("/tokenize", wire.TokenizeRequest(applied.prompt, add_special=True), wire.TokenizeResponse)
    return len(tokens.tokens) + IMAGE_TOKENS * images


def chat_cutter(lease: Lease, num_ctx: int) -> Refit[wire.ChatRequest]:
    async def cut(body: wire.ChatRequest) -> wire.ChatRequest | None:
        """The chat from the earliest cut that fits num_ctx (the whole one did not), as Ollama
        searches it; the last message always stays. Fewer messages never take more tokens, so a
        binary search finds the cut Ollama's front-to-back search does."""
        messages = body.messages
        last = len(messages) - 1
        lo, hi = 1, last
        while lo < hi:
            mid = (lo + hi) // 2
            kept = kept_messages(messages, tool_block_start(messages, mid))
            # llama-server refuses a prompt that fills the context: one token must be left.
            if await chat_tokens(lease, body, kept) < num_ctx:
                hi = mid
            else:
                lo = mid + 1
        kept = kept_messages(messages, tool_block_start(messages, lo))
        if last < 1 or len(kept) == len(messages):
            return None  # nothing to drop: the refusal stands
        return msgspec.structs.replace(body, messages=kept)
    return cut


# What Ollama counts for an image in a prompt it measures (a CLIP image's embeddings).
IMAGE_TOKENS = 768


def tool_block_start(messages: list[wire.ChatMessage], i: int) -> int:
    """Where a chat cut before message `i` must start instead: a tool answer keeps the
    assistant turn that called it, so a cut never leaves a tool result without its call."""
    if i <= 0 or i >= len(messages) or messages[i].role != "tool":
        return i
    start = i
    while start > 0 and messages[start - 1].role == "tool":
        start -= 1
    caller = start - 1
    if caller >= 0 and messages[caller].role == "assistant" and messages[caller].tool_calls:
        return caller
    return i


def kept_messages(messages: list[wire.ChatMessage], start: int) -> list[wire.ChatMessage]:
    """A chat cut at `start`, as Ollama cuts one: the system messages before the cut, then
    everything from it on."""
    return [m for m in messages[:start] if m.role == "system"] + messages[start:]


def counted(messages: list[wire.ChatMessage]) -> tuple[list[wire.ChatMessage], int]:
    """The messages to render for a count, images left out, and the images they had: Ollama
    counts IMAGE_TOKENS for each instead of encoding it."""
    out, images = [], 0
    for m in messages:
        if isinstance(m.content, list):
            parts = [p for p in m.content if p.get("type") != "image_url"]
            images += len(m.content) - len(parts)
            m = msgspec.structs.replace(m, content="".join(p.get("text", "") for p in parts))
        out.append(m)
    return out, images
