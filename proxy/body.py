"""Request bodies decoded into msgspec Structs, every decoding failure a 400 with a clear message."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from litestar import Request

from supervisor.errors import bad_request

T = TypeVar("T")

# The largest body an inference route takes (Litestar's default is 10 MB): a chat with a few
# phone photos in base64 is more than that. Ollama sets no limit at all.
INFERENCE_BODY_LIMIT = 100 * 1024 * 1024


async def decode_body(request: Request, type_: type[T]) -> T:
    body = await request.body()
    if not body.strip():
        raise bad_request("missing request body")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as e:
        raise bad_request(f"invalid request: {e}") from e
    except msgspec.DecodeError as e:
        raise bad_request(f"invalid JSON in request body: {e}") from e


def convert(value: object, type_: type[T], what: str) -> T:
    """Validate a decoded JSON value (a Modelfile's parameters) against a Struct."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as e:
        raise bad_request(f"invalid {what}: {e}") from e
