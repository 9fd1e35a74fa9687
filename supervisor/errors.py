"""The one error type of llamagate: a status and a message each dialect renders in its own shape."""

from __future__ import annotations


class LlamagateError(Exception):
    """A failure to report to a client.

    `status` follows HTTP semantics (400 the client's mistake, 404 no such model, 500 our fault,
    503 busy) because every caller ends up answering HTTP, but nothing here depends on a server.
    """

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # A machine-readable reason for dialects that have one (OpenAI's `code`), e.g.
        # "context_length_exceeded".
        self.code = code


def bad_request(message: str) -> LlamagateError:
    return LlamagateError(400, message)


def not_found(message: str) -> LlamagateError:
    return LlamagateError(404, message)


def server_error(message: str) -> LlamagateError:
    return LlamagateError(500, message)
