"""Pulling a model over Ollama's registry protocol: registry.ollama.ai, hf.co, or any other.

The manifest comes from `<registry>/v2/<namespace>/<model>/manifests/<tag>`, every layer it names
from `.../blobs/<digest>` (through `download.py`), and the manifest is written last, byte for
byte, once every blob is verified. Hugging Face speaks the same protocol on `hf.co`: it builds
the manifest from the repository's GGUF files, the tag naming the quantization.
"""

from __future__ import annotations

import logging
import platform
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import msgspec

from supervisor.errors import LlamagateError, bad_request, not_found
from supervisor.models.store import MANIFEST_TYPE, MODEL, Layer, Manifest, Store, digest_hex
from supervisor.names import ModelName
from supervisor.pull.credentials import DENIED, Credentials
from supervisor.pull.download import Downloads, Retry, follow
from supervisor.version import OLLAMA_VERSION

log = logging.getLogger("llamagate.registry")

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine().lower(), platform.machine().lower())
USER_AGENT = (f"ollama/{OLLAMA_VERSION} ({_ARCH} {sys.platform}) "
              f"Python/{platform.python_version()} llamagate")
MAX_MANIFEST = 4 << 20


class Progress(msgspec.Struct, omit_defaults=True):
    """One step of a pull or a push, in the terms Ollama reports it."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


class _Unreachable(Exception):
    """The registry could not be reached at all (offline, DNS, refused, TLS)."""


def registry_url(name: ModelName, insecure: bool, mirrors: dict[str, str]) -> str:
    """Where a name's registry is: a configured mirror, else `https://<host>`; plain HTTP only
    when the pull says `insecure`, and an `http://` name without it is refused."""
    if mirror := mirrors.get(name.host.lower()):
        return mirror
    if name.scheme == "http" and not insecure:
        raise bad_request("insecure protocol http: set insecure to reach a registry over plain HTTP")
    return f"{'http' if insecure else 'https'}://{name.host}"


def check_manifest(raw: bytes) -> Manifest:
    """A registry's manifest, decoded and checked: valid digests, and a GGUF to serve."""
    try:
        manifest = msgspec.json.decode(raw, type=Manifest)
        for layer in [manifest.config, *manifest.layers]:
            digest_hex(layer.digest)
            if layer.size < 0:
                raise ValueError(f"negative size for {layer.digest}")
    except (msgspec.DecodeError, ValueError, LlamagateError) as e:
        message = e.message if isinstance(e, LlamagateError) else str(e)
        raise LlamagateError(502, f"pull model manifest: invalid manifest: {message}") from e
    if not any(layer.mediaType == MODEL for layer in manifest.layers):
        kinds = ", ".join(sorted({layer.mediaType.rsplit(".", 1)[-1] for layer in manifest.layers}))
        raise bad_request(f"this model has no GGUF model layer (it has: {kinds}); "
                          "llamagate serves GGUF models only")
    return manifest


def layers_of(manifest: Manifest) -> list[Layer]:
    """Every blob to fetch, in Ollama's order (layers, then the config), each digest once."""
    seen: dict[str, Layer] = {}
    for layer in [*manifest.layers, manifest.config]:
        seen.setdefault(digest_hex(layer.digest), layer)
    return list(seen.values())


async def _read_manifest(r: httpx.Response) -> bytes:
    if r.status_code == 404:
        raise not_found("pull model manifest: file does not exist")
    body = b""
    async for chunk in r.aiter_bytes():
        body += chunk
        if len(body) > MAX_MANIFEST:
            raise LlamagateError(502, "pull model manifest: the manifest is too large")
    if r.status_code >= 400:
        text = body.decode(errors="replace").strip()[:500]
        raise LlamagateError(502, f"pull model manifest: {r.status_code}: {text}")
    return body


class Puller:
    def __init__(self, store: Store, mirrors: dict[str, str], retry: Retry | None = None) -> None:
        self.store = store
        self.mirrors = mirrors
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=10.0), headers={"User-Agent": USER_AGENT}
        )
        self.downloads = Downloads(store, self.client, retry)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _manifest(self, base: str, name: ModelName, creds: Credentials) -> bytes:
        url = f"{base}/v2/{name.namespace}/{name.model}/manifests/{name.tag}"
        try:
            try:
                return await self._get_manifest(url, creds)
            except httpx.RemoteProtocolError:
                # A pooled connection the registry closed while it sat idle (the soak met it):
                # a GET is safe to send again, on a new connection.
                return await self._get_manifest(url, creds)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise _Unreachable(f"{url}: {e}") from e
        except httpx.TransportError as e:
            raise LlamagateError(502, f"pull model manifest: {e or type(e).__name__}") from e

    async def _get_manifest(self, url: str, creds: Credentials) -> bytes:
        accept = {"Accept": MANIFEST_TYPE}
        async with follow(self.client, url, {**accept, **creds.headers}, creds.insecure) as r:
            if r.status_code != 401:
                return await _read_manifest(r)
            await creds.answer(r)  # a private model: the registry wants a token
        async with follow(self.client, url, {**accept, **creds.headers}, creds.insecure) as r:
            if r.status_code == 401:
                raise LlamagateError(403, f"pull model manifest: {DENIED}")
            return await _read_manifest(r)

    async def pull(self, text: str, insecure: bool) -> AsyncIterator[Progress]:
        """Pull a model, reporting each step; the first step comes once the manifest is in,
        so a bad name or an unknown model fails before anything is streamed."""
        name = ModelName.parse(text)
        base = registry_url(name, insecure, self.mirrors)
        local = self.store.get(name)
        creds = Credentials(self.client, name.host, insecure)
        try:
            raw = await self._manifest(base, name, creds)
        except _Unreachable as e:
            if local is None or not local.is_complete:
                raise LlamagateError(502, f"pull model manifest: registry unreachable: {e}") from e
            log.info("pull %s: registry unreachable, the local copy is complete (%s)", name.display, e)
            yield Progress("pulling manifest")
            yield Progress("registry unreachable: using the complete local copy")
            yield Progress("success")
            return
        manifest = check_manifest(raw)
        yield Progress("pulling manifest")
        blob_base = f"{base}/v2/{name.namespace}/{name.model}/blobs/"
        layers = layers_of(manifest)
        # Pinned from before the first is looked for until the manifest names them: a delete
        # of a model sharing one meanwhile leaves it.
        async with self.store.pinned(self.store.blob_path(layer.digest) for layer in layers):
            async with AsyncExitStack() as waiting:
                fresh = []
                for layer in layers:
                    status = f"pulling {digest_hex(layer.digest)[:12]}"
                    if self.store.has_blob(layer.digest):
                        self.downloads.clean_leftovers(layer.digest)
                        yield Progress(status, layer.digest, layer.size, layer.size)
                        continue
                    download = waiting.enter_context(
                        self.downloads.join(layer.digest, layer.size, blob_base + layer.digest, insecure,
                                            creds.headers)
                    )
                    async for completed in download.progress():
                        yield Progress(status, layer.digest, layer.size, completed)
                    fresh.append(download)
                yield Progress("verifying sha256 digest")
                for download in fresh:
                    await download.wait()
            yield Progress("writing manifest")
            try:
                await self.store.change(lambda: self.store.write_manifest(name, manifest, raw))
            except OSError as e:
                raise LlamagateError(507, f"writing the manifest of {name.display}: {e.strerror or e}") from e
        yield Progress("success")
