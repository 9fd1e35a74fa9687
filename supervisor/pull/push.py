"""Pushing a model to a registry over the protocol Ollama pushes with (Docker's distribution API).

For every blob the manifest names (its layers, then its config): `HEAD .../blobs/<digest>` says
whether the registry has it already; if not, `POST .../blobs/uploads/` opens an upload session,
with `?mount=<digest>&from=<repository>` where another model of this store on the same registry
has the blob, so that the registry links it instead of receiving it again (201 = mounted). A
blob of at most `PART` bytes then goes in one `PUT <session>?digest=<digest>`; a larger one in
`PATCH`es of `PART` bytes each (`Content-Range`, following each answer's `Location`), closed by an
empty `PUT ?digest=`. A dropped connection or a 5xx is tried again as a download part is: a part
goes on from where the session's status (`GET <session>`, its `Range`) says the registry's bytes
end, a one-request blob starts over in a new session. The manifest goes last, byte for byte as
stored, so the model keeps its digest. Each request carries the registry's token once it has
asked for one (`credentials.py`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote, urljoin

import httpx

from supervisor.errors import LlamagateError, bad_request, not_found
from supervisor.models.store import MANIFEST_TYPE, Layer, Store, digest_hex
from supervisor.names import ModelName
from supervisor.pull.credentials import Credentials, Dropped
from supervisor.pull.download import TICK, Retry
from supervisor.pull.registry import Progress, layers_of, registry_url

log = logging.getLogger("llamagate.registry")

MB = 1_000_000
PART = 64 * MB
RETRY = Retry()  # as a download part: 6 failures in a row, 0.5 s to 8 s apart
_READ = 1 << 20


def _reject(what: str, r: httpx.Response) -> LlamagateError:
    return LlamagateError(502, f"{what}: {r.status_code}: {r.text.strip()[:300]}")


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={quote(digest)}"


class _Upload:
    """One blob on its way to the registry, and how many of its bytes are sent."""

    def __init__(self, creds: Credentials, repo: str, layer: Layer, store: Store, mount_from: str) -> None:
        self.creds = creds
        self.repo = repo
        self.layer = layer
        self.path = store.blob_path(layer.digest)
        self.mount_from = mount_from
        self.completed = 0

    def _body(self, start: int, size: int) -> Callable[[], AsyncIterator[bytes]]:
        """The bytes [start, start+size) of the blob, counted as they go; made anew for each
        sending, so a request sent again (with a token) counts from its start again."""
        async def chunks() -> AsyncIterator[bytes]:
            self.completed = start
            with open(self.path, "rb") as f:
                f.seek(start)
                left = size
                while left:
                    data = f.read(min(_READ, left))
                    if not data:
                        raise LlamagateError(500, f"{self.path} is shorter than its manifest says")
                    left -= len(data)
                    self.completed += len(data)
                    yield data

        return chunks

    async def _open(self) -> str | None:
        """An upload session's URL; None when the registry mounted the blob instead."""
        what, digest = f"push {digest_hex(self.layer.digest)[:12]}", self.layer.digest
        url = f"{self.repo}/blobs/uploads/"
        if self.mount_from:
            url += f"?mount={quote(digest)}&from={quote(self.mount_from)}"
        r = await self.creds.send("POST", url)
        if r.status_code == 201:
            log.info("%s: mounted from %s", what, self.mount_from)
            return None
        if r.status_code != 202 or "location" not in r.headers:
            raise _reject(f"{what}: opening an upload session", r)
        return urljoin(url, r.headers.get("docker-upload-location") or r.headers["location"])

    async def run(self) -> None:
        size, digest = self.layer.size, self.layer.digest
        what = f"push {digest_hex(digest)[:12]}"
        failures = 0
        location = await self._open()
        while location is not None:
            try:
                if size <= PART:
                    r = await self._send(
                        "PUT", _with_digest(location, digest), {"Content-Length": str(size)}, self._body(0, size))
                else:
                    location = await self._parts(location)
                    r = await self._send("PUT", _with_digest(location, digest), {"Content-Length": "0"})
                if r.status_code not in (201, 204):
                    raise _reject(f"{what}: closing the upload", r)
                break
            except Dropped as e:
                # A blob in one request starts again in a new session; `_parts` resumed already.
                failures = await self._failed(e, failures)
                location = await self._open()
        self.completed = size

    async def _send(self, method: str, url: str, headers: dict[str, str],
                    body: Callable[[], AsyncIterator[bytes]] | None = None) -> httpx.Response:
        """A request carrying blob bytes; a 5xx counts as a dropped request: worth sending again."""
        r = await self.creds.send(method, url, {"Content-Type": "application/octet-stream", **headers}, body)
        if r.status_code >= 500:
            raise Dropped(f"{method} {url}: {r.status_code}: {r.text.strip()[:300]}")
        return r

    async def _failed(self, e: Dropped, failures: int) -> int:
        """Wait before trying again, or give up after RETRY.attempts failures in a row."""
        failures += 1
        if failures >= RETRY.attempts:
            raise LlamagateError(502, f"{e.message} (push again: the blobs already up are not sent again)") from e
        log.info("push %s: %s; trying again", digest_hex(self.layer.digest)[:12], e.message)
        await asyncio.sleep(RETRY.delay(failures))
        return failures

    async def _parts(self, location: str) -> str:
        """PATCH the blob in parts of PART bytes; after a failed part, the registry's upload
        status (`GET <session>`, its `Range`) says where to go on from. The last part's URL."""
        what, size = f"push {digest_hex(self.layer.digest)[:12]}", self.layer.size
        start, failures = 0, 0
        while start < size:
            n = min(PART, size - start)
            headers = {"Content-Length": str(n), "Content-Range": f"{start}-{start + n - 1}"}
            try:
                r = await self._send("PATCH", location, headers, self._body(start, n))
                if r.status_code != 202:
                    raise _reject(f"{what}: sending bytes {start}-{start + n - 1}", r)
                location = urljoin(location, r.headers.get("location", location))
                start, failures = start + n, 0
            except Dropped as e:
                failures = await self._failed(e, failures)
                r = await self.creds.send("GET", location)
                received = re.fullmatch(r"0-(\d+)", r.headers.get("range", ""))
                if r.status_code != 204 or received is None:
                    raise _reject(f"{what}: asking the registry how much of it arrived", r) from e
                start = int(received.group(1)) + 1 if received.group(1) != "0" else 0
                location = urljoin(location, r.headers.get("location", location))
        return location


class Pusher:
    def __init__(self, store: Store, mirrors: dict[str, str], client: httpx.AsyncClient) -> None:
        self.store = store
        self.mirrors = mirrors
        self.client = client

    def _mount_source(self, name: ModelName, digest: str) -> str:
        """Another repository of the same registry that has the blob, as this store knows from
        the models it holds (pulled from there, or pushed there before); empty if none."""
        for model in self.store.stored():
            other = model.name
            same_repo = (other.namespace, other.model) == (name.namespace, name.model)
            if other.host.lower() != name.host.lower() or same_repo:
                continue
            if any(la.digest == digest for la in [model.manifest.config, *model.manifest.layers]):
                return f"{other.namespace}/{other.model}"
        return ""

    async def push(self, text: str, insecure: bool) -> AsyncIterator[Progress]:
        """Push a model, reporting each step as Ollama does; a bad name, an unknown or
        incomplete model fails before anything is streamed."""
        name = ModelName.parse(text)
        base = registry_url(name, insecure, self.mirrors)
        model = self.store.get(name)
        if model is None:
            raise not_found(f"model '{text}' not found")
        manifest = model.manifest
        layers = layers_of(manifest)
        if missing := [la.digest for la in layers if not self.store.has_blob(la.digest)]:
            raise bad_request(f"model '{text}' is missing blob {missing[0]} in the store: pull or create it again")
        repo = f"{base}/v2/{name.namespace}/{name.model}"
        creds = Credentials(self.client, name.host, insecure)
        yield Progress("retrieving manifest")
        for layer in layers:
            status = f"pushing {digest_hex(layer.digest)[:12]}"
            r = await creds.send("HEAD", f"{repo}/blobs/{layer.digest}", follow=True)
            if r.status_code == 200:
                yield Progress(status, layer.digest, layer.size, layer.size)
                continue
            if r.status_code != 404:
                raise _reject(f"push {digest_hex(layer.digest)[:12]}: checking the registry for it", r)
            upload = _Upload(creds, repo, layer, self.store, self._mount_source(name, layer.digest))
            task = asyncio.create_task(upload.run())
            try:
                while not task.done():
                    yield Progress(status, layer.digest, layer.size, upload.completed)
                    await asyncio.wait([task], timeout=TICK)
                task.result()
            finally:
                task.cancel()  # the client left: stop sending
            yield Progress(status, layer.digest, layer.size, layer.size)
        yield Progress("pushing manifest")
        r = await creds.send("PUT", f"{repo}/manifests/{name.tag}", {"Content-Type": MANIFEST_TYPE},
                             model.manifest_bytes)
        if r.status_code not in (200, 201, 202):
            raise _reject("push manifest", r)
        log.info("pushed %s to %s", name.display, base)
        yield Progress("success")
