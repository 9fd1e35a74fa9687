"""Models that other Ollama-API servers serve (another llamagate, an Ollama, named in `[upstreams]`):
a request passed on in the client's own dialect to the server with the fewest requests in flight,
and its answer streamed back as it comes. Ollama's answers gain `remote_model` and `remote_host`, as
Ollama's own answers for a remote model do; /v1 answers go back as they are.

Both dialects call `forward` right after resolving the model, so that nothing of ours (templates,
options, truncation) is applied twice: the server at the back does all of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from litestar import Request, Response
from litestar.response import Stream

from proxy import exchange
from proxy.errors import error_response
from supervisor.errors import LlamagateError
from supervisor.httpclient import async_client
from supervisor.models.model import Model
from supervisor.models.remote import Pool, PoolLease

_TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None)
# The answer headers worth passing on; hop-by-hop ones and the length (a rewrite changes it) are not.
_KEPT = ("content-type", "cache-control", "x-accel-buffering")


class Forwarder:
    def __init__(self) -> None:
        # One pooled client for every Ollama-API server: its connections are kept per host.
        self._client = async_client(timeout=_TIMEOUT, limits=httpx.Limits(max_keepalive_connections=64))

    async def forward(self, request: Request, model: Model) -> Response[Any] | None:
        """The answer of the server that serves `model`, or None when it is not served by an
        Ollama-API server (the caller then serves it itself)."""
        pool = model.target
        if not isinstance(pool, Pool) or not await pool.identify():
            return None
        if x := exchange.current():
            x.model = model.name.display
        path = request.url.path
        # Its name there: the same ([upstreams]), or the one `remote_host`'s create gave.
        body, asked = _renamed(await request.body(), pool.name)
        lease = PoolLease(pool, pool.pick())
        try:
            response = await self._send(lease, path, body, x.request_id if x else "")
        except BaseException:
            lease.release()
            raise
        if response.status_code != 200 or not response.headers.get("content-type", "").startswith(
                ("application/x-ndjson", "text/event-stream")):
            try:
                content = await response.aread()
            except httpx.HTTPError as e:
                raise await lease.failure(e) from e
            finally:
                await response.aclose()
                lease.release()
            if response.status_code == 200 and not path.startswith("/v1"):
                content = _annotated(content, lease, asked)
            return Response(content, status_code=response.status_code, headers=_headers(response))
        return Stream(self._relay(lease, response, path, asked), status_code=200,
                      headers=_headers(response))

    async def _send(self, lease: PoolLease, path: str, body: bytes, request_id: str) -> httpx.Response:
        """POST to the lease's server; one that refuses the connection hands it to the next in
        rotation, since nothing reached it. The request id goes along, so that both logs name
        the request alike."""
        while True:
            # The client's own key stays here: the servers at the back are another trust domain.
            headers = {"Content-Type": "application/json", **({"X-Request-Id": request_id} if request_id else {})}
            if lease.api_key:
                headers["Authorization"] = f"Bearer {lease.api_key}"
            request = self._client.build_request("POST", lease.base_url + path, content=body, headers=headers)
            try:
                return await self._client.send(request, stream=True)
            except httpx.ConnectError as e:
                if not lease.failover(e):  # every server refused: the 503 names them all
                    raise lease.pool.unreachable() from e
            except httpx.HTTPError as e:
                raise await lease.failure(e) from e

    async def _relay(self, lease: PoolLease, response: httpx.Response, path: str, name: str) -> AsyncIterator[bytes]:
        """The answer as it comes, Ollama's line by line with the remote fields added; a server
        that breaks mid-answer ends it with an error in the dialect's stream shape."""
        try:
            if path.startswith("/v1"):
                async for data in response.aiter_raw():
                    yield data
                return
            buffer = b""
            async for data in response.aiter_raw():
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _annotated(line, lease, name) + b"\n"
        except httpx.HTTPError as e:
            error = await lease.failure(e)
            if path.startswith("/v1"):
                shaped = error_response(path, error.status, error.message)
                yield b"data: " + (shaped.content if shaped else b"{}") + b"\n\n"
            else:
                yield msgspec.json.encode({"error": error.message}) + b"\n"
        finally:
            await response.aclose()
            lease.release()

    async def aclose(self) -> None:
        await self._client.aclose()


def _renamed(body: bytes, name: str) -> tuple[bytes, str]:
    """The request with the model's name as the server there knows it (`model`, or `name` on
    older /api/show clients), and the name the client asked for. Decoded as a plain object, not
    a Struct of ours: every field the client sent must reach the server, known to us or not."""
    try:
        obj = msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise LlamagateError(400, f"invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise LlamagateError(400, "the request body must be a JSON object")
    asked = str(obj.get("model") or obj.get("name") or "")
    for key in ("model", "name"):
        if obj.get(key):
            obj[key] = name
    return msgspec.json.encode(obj), asked


def _annotated(line: bytes, lease: PoolLease, name: str) -> bytes:
    """One Ollama answer (or line of one) as Ollama answers for a remote model: in the name the
    client asked for, with the server and its name there; an error line as it is."""
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return line
    if not isinstance(obj, dict) or "error" in obj:
        return line
    if "model" in obj:
        obj["model"] = name
    obj["remote_model"] = lease.pool.name
    obj["remote_host"] = lease.base_url
    return msgspec.json.encode(obj)


def _headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() in _KEPT}
