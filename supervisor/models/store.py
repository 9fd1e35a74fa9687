"""The model store, in Ollama's on-disk layout: `manifests/<host>/<ns>/<model>/<tag>` and `blobs/`.
Disk only: the catalog (catalog.py) resolves names over it and the `--upstream` pools."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from supervisor.errors import LlamagateError, bad_request, not_found
from supervisor.models.gguf import human_number, read_gguf
from supervisor.names import ModelName


T = TypeVar("T")

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL = "application/vnd.ollama.image.model"
PROJECTOR = "application/vnd.ollama.image.projector"
ADAPTER = "application/vnd.ollama.image.adapter"
DRAFT = "application/vnd.ollama.image.draft"  # speculative decoding's draft model (Ollama 0.30)
TEMPLATE = "application/vnd.ollama.image.template"
SYSTEM = "application/vnd.ollama.image.system"
PARAMS = "application/vnd.ollama.image.params"
MESSAGES = "application/vnd.ollama.image.messages"
LICENSE = "application/vnd.ollama.image.license"

_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_BLOB_NAME = re.compile(r"sha256-[0-9a-f]{64}")
_CHUNK = 1 << 20
# Ollama's layerPruneGracePeriod: a file this young may belong to another process's pull or
# create whose manifest is not written yet, so the startup prune leaves it.
PRUNE_GRACE = 3600.0


class Layer(msgspec.Struct, omit_defaults=True):
    mediaType: str
    digest: str
    size: int
    from_: str = msgspec.field(default="", name="from")


class Manifest(msgspec.Struct):
    config: Layer
    layers: list[Layer]
    schemaVersion: int = 2
    mediaType: str = MANIFEST_TYPE


class ModelConfig(msgspec.Struct, omit_defaults=True):
    """The config blob: what /api/tags reports as `details` without opening the GGUF."""

    model_format: str = ""
    model_family: str = ""
    model_families: list[str] | None = None
    model_type: str = ""
    file_type: str = ""
    architecture: str = "amd64"
    os: str = "linux"
    context_length: int = 0
    embedding_length: int = 0
    # A model another Ollama-API server serves (`remote_host` in /api/create): no GGUF here.
    remote_host: str = ""
    remote_model: str = ""
    base_name: str = ""
    # Names of Ollama's built-in prompt renderer and output parser, and the least Ollama version
    # the model needs: kept for Ollama, which may serve the same store (llamagate renders with
    # the GGUF's chat template and parses with llama-server's parsers).
    renderer: str = ""
    parser: str = ""
    requires: str = ""


# What a create request may say of a model (renderer, parser, requires, `info`'s details).
_DESCRIBED = ("model_family", "model_type", "file_type", "base_name", "renderer", "parser", "requires")


class Message(msgspec.Struct, omit_defaults=True):
    role: str
    content: str = ""


def digest_hex(digest: str) -> str:
    """The 64 hex digits of `sha256:<hex>` or `sha256-<hex>`; anything else (a path trick) is a 400."""
    m = _DIGEST.fullmatch(digest)
    if not m:
        raise bad_request(f"invalid digest format {digest!r}")
    return m.group(1).lower()


def disk_error(what: str, e: OSError) -> LlamagateError:
    return LlamagateError(507, f"not enough disk space to {what}: {e.strerror or e}")


def write_at(fd: int, data: bytes, offset: int) -> None:
    """pwrite all of `data`, for a thread, on a dup of the file's fd that it closes: the task that
    started it may be cancelled and close its own fd meanwhile, whose number a new file may get."""
    try:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)


def fsync_dup(fd: int) -> None:
    """fsync, for a thread, on a dup of the fd that it closes (see `write_at`)."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write then rename, so a reader or a crash sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@dataclass
class StoredModel:
    """One manifest in the store and what its layers say."""

    store: Store
    name: ModelName
    manifest_path: Path
    manifest_bytes: bytes

    @cached_property
    def manifest(self) -> Manifest:
        return msgspec.json.decode(self.manifest_bytes, type=Manifest)

    @property
    def digest(self) -> str:
        """Ollama's model digest: the SHA-256 of the manifest file's bytes."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def modified_at(self) -> datetime:
        return datetime.fromtimestamp(self.manifest_path.stat().st_mtime).astimezone()

    @property
    def is_complete(self) -> bool:
        """Every blob the manifest names is in the store: the model can be served offline."""
        try:
            layers = [self.manifest.config, *self.manifest.layers]
            return all(self.store.has_blob(layer.digest) for layer in layers)
        except (msgspec.DecodeError, LlamagateError):
            return False

    @property
    def size(self) -> int:
        return self.manifest.config.size + sum(layer.size for layer in self.manifest.layers)

    def _layer(self, media_type: str) -> Layer | None:
        return next((la for la in self.manifest.layers if la.mediaType == media_type), None)

    def _text(self, media_type: str) -> str:
        layer = self._layer(media_type)
        return self.store.blob_path(layer.digest).read_text() if layer else ""

    @property
    def model_path(self) -> Path:
        layer = self._layer(MODEL)
        if layer is None:
            raise bad_request(f"{self.name.display} has no model layer")
        return self.store.blob_path(layer.digest)

    @property
    def projector_path(self) -> Path | None:
        layer = self._layer(PROJECTOR)
        return self.store.blob_path(layer.digest) if layer else None

    @property
    def draft_path(self) -> Path | None:
        layer = self._layer(DRAFT)
        return self.store.blob_path(layer.digest) if layer else None

    @property
    def adapter_paths(self) -> tuple[Path, ...]:
        return tuple(self.store.blob_path(la.digest) for la in self.manifest.layers if la.mediaType == ADAPTER)

    @property
    def licenses(self) -> list[str]:
        return [self.store.blob_path(la.digest).read_text() for la in self.manifest.layers if la.mediaType == LICENSE]

    @cached_property
    def config(self) -> ModelConfig:
        path = self.store.blob_path(self.manifest.config.digest)
        try:
            return msgspec.json.decode(path.read_bytes(), type=ModelConfig)
        except (OSError, msgspec.DecodeError):
            return ModelConfig()

    @property
    def template(self) -> str:
        return self._text(TEMPLATE)

    @property
    def system(self) -> str:
        return self._text(SYSTEM)

    @cached_property
    def params(self) -> dict[str, Any]:
        text = self._text(PARAMS)
        return msgspec.json.decode(text) if text else {}

    @cached_property
    def messages(self) -> list[Message]:
        text = self._text(MESSAGES)
        return msgspec.json.decode(text, type=list[Message]) if text else []


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        # Counts this process's writes of manifests, so that what was read before one is read again.
        self.generation = 0
        # The store lock: every change (a manifest written, a model created or deleted) and every
        # pin is taken under it, so a delete's prune never runs between a pin and its check.
        self._lock = asyncio.Lock()
        # Blobs in use by work in flight (a pull before its manifest is written, a request on its
        # runner), and those a delete left to them: pruned when their last pin goes.
        self._pins: Counter[Path] = Counter()
        self._orphans: set[Path] = set()
        self._pruning: set[asyncio.Task[None]] = set()

    def blob_path(self, digest: str) -> Path:
        return self.blobs / f"sha256-{digest_hex(digest)}"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    # Reading -----------------------------------------------------------------------------------

    def _iter_manifest_paths(self) -> Iterator[Path]:
        if self.manifests.is_dir():
            yield from (p for p in self.manifests.glob("*/*/*/*") if p.is_file() and not p.name.startswith("."))

    def _load(self, path: Path) -> StoredModel:
        host, namespace, model, tag = path.relative_to(self.manifests).parts
        return StoredModel(self, ModelName(host, namespace, model, tag), path, path.read_bytes())

    def stored(self) -> list[StoredModel]:
        """Every model in the store, newest first; unreadable manifests are left out."""
        models = []
        for path in self._iter_manifest_paths():
            try:
                model = self._load(path)
                model.manifest  # noqa: B018 - decode now so a corrupt manifest is skipped here
            except (OSError, msgspec.DecodeError, ValueError):
                continue
            models.append(model)
        return sorted(models, key=lambda m: m.manifest_path.stat().st_mtime, reverse=True)

    def _existing_path(self, name: ModelName) -> Path | None:
        """The manifest for `name`, each part matched case-insensitively as Ollama does."""
        path = self.manifests
        for part in name.parts:
            exact = path / part
            if exact.exists():
                path = exact
                continue
            if not path.is_dir():
                return None
            match = next((p for p in path.iterdir() if p.name.lower() == part.lower()), None)
            if match is None:
                return None
            path = match
        return path if path.is_file() else None

    def digests_in_use(self) -> set[str]:
        """Every blob digest some manifest names (config included), as `sha256:<hex>`."""
        used = set()
        for model in self.stored():
            used.add(model.manifest.config.digest)
            used.update(la.digest for la in model.manifest.layers)
        return used

    def get(self, name: ModelName) -> StoredModel | None:
        path = self._existing_path(name)
        return self._load(path) if path else None

    # Changing, under the store lock ------------------------------------------------------------

    async def change(self, work: Callable[[], T]) -> T:
        """`work` (a manifest written, a model created) in a thread under the store lock: its
        fsyncs and GGUF reads never stall the event loop, and no delete's prune runs meanwhile."""
        async with self._lock:
            return await asyncio.to_thread(work)

    @asynccontextmanager
    async def pinned(self, blobs: Iterable[Path]) -> AsyncIterator[None]:
        """Keep `blobs` while the work inside needs them: a delete meanwhile leaves them, and
        they are pruned once the last pin goes if no manifest names them by then. Pinning waits
        for a delete under way, so a blob found on disk inside is there until the end."""
        held = list(blobs)
        async with self._lock:
            self._pins.update(held)
        try:
            yield
        finally:
            self._pins.subtract(held)
            freed = {path for path in held if self._pins[path] <= 0}
            for path in freed:
                del self._pins[path]
            if freed & self._orphans:
                task = asyncio.create_task(self._prune_orphans())
                self._pruning.add(task)
                task.add_done_callback(self._pruning.discard)

    async def delete(self, model: StoredModel) -> list[str]:
        """Remove a manifest, then the blobs no other manifest names and no work in flight
        pins; returns the digests pruned now (the pinned ones go when their work ends)."""
        async with self._lock:
            pruned, left = await asyncio.to_thread(self._delete, model, set(self._pins))
            self._orphans.update(left)
        await self._prune_orphans()  # a pin that went while the delete ran
        return pruned

    async def _prune_orphans(self) -> None:
        async with self._lock:
            free = {path for path in self._orphans if path not in self._pins}
            self._orphans -= free
            if free:
                await asyncio.to_thread(self._prune, free)

    def _prune(self, paths: set[Path]) -> list[str]:
        """Unlink those of `paths` no manifest names now (a pull may have named one meanwhile)."""
        in_use = {self.blob_path(digest) for digest in self.digests_in_use()}
        pruned = []
        for path in paths - in_use:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            pruned.append(path.name.replace("sha256-", "sha256:"))
        return pruned

    def _delete(self, model: StoredModel, pinned: set[Path]) -> tuple[list[str], set[Path]]:
        self.generation += 1
        try:
            model.manifest_path.unlink()
        except FileNotFoundError:  # a delete of the same model just before this one
            raise not_found(f"model '{model.name.display}' not found") from None
        self._remove_empty_dirs(model.manifest_path.parent)
        layers = {self.blob_path(layer.digest) for layer in [model.manifest.config, *model.manifest.layers]}
        return self._prune(layers - pinned), layers & pinned

    def _remove_empty_dirs(self, directory: Path) -> None:
        while directory != self.manifests and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
            directory = directory.parent

    def prune(self, grace: float = PRUNE_GRACE) -> int:
        """At startup, as Ollama prunes unless OLLAMA_NOPRUNE: files in blobs/ that are no blob
        (partial downloads, temporary files of a killed upload or write), blobs no manifest names,
        temporary files beside manifests, and empty manifest folders; each only when older than
        `grace`, since another process may be writing it. Returns how many files went."""
        old = time.time() - grace
        removed = 0
        in_use = {digest_hex(d) for d in self.digests_in_use()}
        for path in self.blobs.iterdir() if self.blobs.is_dir() else ():
            try:
                if not path.is_file() or path.stat().st_mtime > old:
                    continue
                if not _BLOB_NAME.fullmatch(path.name) or path.name[7:] not in in_use:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if self.manifests.is_dir():
            for path in sorted(self.manifests.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                try:
                    if path.is_file() and path.name.startswith(".") and path.name.endswith(".tmp"):
                        if path.stat().st_mtime <= old:
                            path.unlink()
                            removed += 1
                    elif path.is_dir() and not any(path.iterdir()):
                        path.rmdir()
                except FileNotFoundError:
                    continue
        return removed

    # Writing -----------------------------------------------------------------------------------

    def _new_blob_tmp(self) -> tuple[int, str]:
        self.blobs.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=self.blobs, prefix=".upload-", suffix=".tmp")

    def _commit_blob(self, tmp: str, hex_digest: str) -> Path:
        final = self.blobs / f"sha256-{hex_digest}"
        os.replace(tmp, final)
        fsync_dir(self.blobs)
        return final

    @contextmanager
    def pending_blob(self) -> Iterator[Path]:
        """A temporary file in `blobs/` for a blob being written by someone else (llama-quantize):
        `commit_blob_file` makes it a blob; whatever is left of it on leaving is removed, so a
        failed or cancelled write never leaves a half-written file in the store."""
        fd, tmp = self._new_blob_tmp()
        os.close(fd)
        try:
            yield Path(tmp)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def commit_blob_file(self, tmp: Path, media_type: str) -> Layer:
        """A finished pending blob, hashed and renamed into place under its digest."""
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        self._commit_blob(str(tmp), h.hexdigest())
        return Layer(media_type, "sha256:" + h.hexdigest(), size)

    def add_blob_bytes(self, data: bytes, media_type: str) -> Layer:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            _atomic_write(self.blob_path(digest), data)
        return Layer(media_type, digest, len(data))

    def add_blob_file(self, src: Path, media_type: str) -> Layer:
        """Hash a local file into a blob (a copy: the store must not depend on the original)."""
        fd, tmp = self._new_blob_tmp()
        h = hashlib.sha256()
        try:
            with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                while chunk := fin.read(_CHUNK):
                    h.update(chunk)
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            path = self._commit_blob(tmp, h.hexdigest())
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return Layer(media_type, "sha256:" + h.hexdigest(), path.stat().st_size)

    async def add_blob_stream(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        """Store an uploaded blob if its bytes hash to `digest`; False if it was already there.

        Written in a thread a megabyte at a time, so the disk never stalls the event loop. A
        mismatch is a 400 and a full disk a 507; either leaves nothing behind.
        """
        want = digest_hex(digest)
        if self.has_blob(digest):
            async for _ in chunks:
                pass
            return False
        fd, tmp = await asyncio.to_thread(self._new_blob_tmp)
        h = hashlib.sha256()
        size = 0

        async def write(data: bytes) -> None:
            nonlocal size
            h.update(data)
            await asyncio.to_thread(write_at, os.dup(fd), data, size)
            size += len(data)

        try:
            try:
                buffer = bytearray()
                async for chunk in chunks:
                    buffer += chunk
                    if len(buffer) >= _CHUNK:
                        await write(bytes(buffer))
                        buffer.clear()
                await write(bytes(buffer))
                await asyncio.to_thread(fsync_dup, os.dup(fd))
            finally:
                os.close(fd)
            if h.hexdigest() != want:
                raise bad_request(f'digest mismatch, expected "sha256:{want}", got "sha256:{h.hexdigest()}"')
            await asyncio.to_thread(self._commit_blob, tmp, want)
        except OSError as e:
            if e.errno not in DISK_FULL:
                raise
            async for _ in chunks:  # read to the end, so that the client hears why, not a reset
                pass
            raise disk_error(f"store blob {digest}", e) from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return True

    def write_manifest(self, name: ModelName, manifest: Manifest, raw: bytes | None = None) -> StoredModel:
        """Write a manifest last, once every blob it names is in place. `raw` is a pulled
        manifest's bytes as the registry sent them: their SHA-256 is the model's digest."""
        for layer in [manifest.config, *manifest.layers]:
            if not self.has_blob(layer.digest):
                raise bad_request(f"blob {layer.digest} is missing from the store")
        existing = self._existing_path(name)
        path = existing or self.manifests.joinpath(*name.parts)
        self.generation += 1
        _atomic_write(path, raw if raw is not None else msgspec.json.encode(manifest))
        return self._load(path)

    def copy(self, source: StoredModel, destination: ModelName) -> StoredModel:
        """An alias: the same manifest bytes under another name, so it shares every blob."""
        path = self._existing_path(destination) or self.manifests.joinpath(*destination.parts)
        self.generation += 1
        _atomic_write(path, source.manifest_bytes)
        return self._load(path)

    def create(
        self,
        name: ModelName,
        model_layer: Layer | None,
        *,
        remote: ModelConfig | None = None,
        template: str = "",
        system: str = "",
        params: dict[str, Any] | None = None,
        messages: list[Message] | None = None,
        license: str | list[str] = "",
        extra_layers: list[Layer] | None = None,
        described: ModelConfig | None = None,
        on_layer: Callable[[Layer, bool], None] | None = None,
    ) -> StoredModel:
        """Write a model from a GGUF blob already in the store plus its text layers, or (with no
        layer) one that `remote`, a config naming its server, says is served elsewhere.

        `extra_layers` (a projector, adapters) are blobs already in the store; `described` holds
        what the request said of the model (renderer, parser, requires, `info`'s details), the
        GGUF filling in what it left empty, as Ollama does; `on_layer` hears of every layer with
        whether its blob was new, for `create`'s status lines.
        """
        given = described or ModelConfig()
        if remote is not None:
            # What the request said of it over the remote's config, as Ollama fills one config.
            said = {k: v for k, v in msgspec.structs.asdict(given).items() if v and k in _DESCRIBED}
            config = msgspec.structs.replace(remote, **said)
        else:
            assert model_layer is not None, "a model is a GGUF here or a remote one"
            info = read_gguf(self.blob_path(model_layer.digest))
            family = given.model_family or info.architecture
            config = msgspec.structs.replace(
                given,
                model_format="gguf",
                model_family=family,
                model_families=[family] if family else None,
                model_type=given.model_type or human_number(info.parameter_count),
                file_type=given.file_type or info.file_type,
                context_length=info.context_length,
                embedding_length=info.embedding_length,
            )
        layers = [*([model_layer] if model_layer else []), *(extra_layers or [])]
        if on_layer:
            for layer in layers:
                on_layer(layer, False)
        licenses = [license] if isinstance(license, str) else license
        texts = [(TEMPLATE, template), (SYSTEM, system), *((LICENSE, text) for text in licenses)]
        if params:
            texts.append((PARAMS, msgspec.json.encode(params).decode()))
        if messages:
            texts.append((MESSAGES, msgspec.json.encode(messages).decode()))
        for media_type, text in texts:
            if text:
                new = not self.has_blob("sha256:" + hashlib.sha256(text.encode()).hexdigest())
                layers.append(self.add_blob_bytes(text.encode(), media_type))
                if on_layer:
                    on_layer(layers[-1], new)
        config_layer = self.add_blob_bytes(msgspec.json.encode(config), CONFIG_TYPE)
        return self.write_manifest(name, Manifest(config=config_layer, layers=layers))
