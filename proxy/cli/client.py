"""The CLI's client of a running llamagate (or Ollama) server at OLLAMA_HOST."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from supervisor.config import parse_host

if TYPE_CHECKING:  # httpx is imported by the first command that talks to a server: `--version` never does
    import httpx


class ClientError(Exception):
    """The server's error message; `status` is the HTTP status it came with (0 for an error line
    in a stream, or no answer at all)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def base_url() -> str:
    scheme, host, port = parse_host(os.environ.get("OLLAMA_HOST", ""))
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


class Client:
    def __init__(self, url: str | None = None) -> None:
        self.url = url or base_url()
        # The key of a server that wants one (README, "Keys, the Host check and limits").
        key = os.environ.get("LLAMAGATE_API_KEY", "").strip()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        import httpx

        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(30.0, read=None))

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            response.read()
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text.strip() or f"HTTP {response.status_code}"
            raise ClientError(message, response.status_code)
        return response

    @contextmanager
    def _connected(self) -> Iterator[None]:
        import httpx

        try:
            yield
        except httpx.ConnectError as e:
            raise ClientError(f"could not connect to a running server at {self.url} ({e}); "
                              "start one with `llamagate serve`") from e
        except httpx.TransportError as e:  # the server went away mid-answer: a message, not a traceback
            raise ClientError(f"lost the connection to the server at {self.url} ({e or type(e).__name__})") from e

    def exists(self, path: str) -> bool:
        """HEAD: 200 → True, 404 → False."""
        with self._connected():
            response = self.http.head(path)
        if response.status_code == 404:
            return False
        return self._check(response).status_code == 200

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self._connected():
            return self._check(self.http.request(method, path, **kwargs))

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST and yield each NDJSON object; an `error` line becomes a ClientError."""
        with self._connected(), self.http.stream("POST", path, json=body) as response:
            self._check(response)
            for line in response.iter_lines():
                if not line:
                    continue
                obj = json.loads(line)
                if obj.get("error"):
                    raise ClientError(obj["error"])
                yield obj
