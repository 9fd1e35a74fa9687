"""Request bodies decoded into msgspec Structs, every decoding failure a 400 with a clear message."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from litestar import Request

from supervisor.errors import bad_request

T = TypeVar("T")

# The largest body each family of routes takes (Ollama sets no limit at all); a larger one is a
# 413 in the route's dialect. Inference routes say so on their decorators: a chat with a few
# phone photos in base64 is tens of MB.
INFERENCE_BODY_LIMIT = 100 * 1024 * 1024
# Every other route, the app's default: JSON naming a model, or a Modelfile's parts for /api/create.
METADATA_BODY_LIMIT = 1024 * 1024
# Blob uploads (POST /api/blobs/<digest>) have no limit: they stream to disk, checked against
# their digest, and a GGUF is gigabytes.


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
    except RecursionError:
        # Arrays or objects nested thousands deep, in a field that takes any JSON (`format`).
        raise bad_request("invalid JSON in request body: nested too deeply") from None


def convert(value: object, type_: type[T], what: str) -> T:
    """Validate a decoded JSON value (a Modelfile's parameters) against a Struct."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as e:
        raise bad_request(f"invalid {what}: {e}") from e
