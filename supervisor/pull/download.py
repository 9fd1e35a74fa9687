"""Resumable, parallel, verified blob downloads into the store, in Ollama's partial-file layout.

`blobs/sha256-<hex>-partial` holds the bytes at their offsets and `-partial-<N>` records how much
of part N is in it (`{"N","Offset","Size","Completed"}`, as Ollama writes it, so either program
resumes the other's download). The blob gets its real name only once its SHA-256 matches, so a
killed process never leaves a blob that looks complete but is not.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import msgspec

from supervisor.errors import LlamagateError
from supervisor.models.store import DISK_FULL, Store, disk_error, digest_hex, fsync_dir, fsync_dup, write_at

log = logging.getLogger("llamagate.download")

MB = 1_000_000
MAX_PARTS = 16
MIN_PART = 16 * MB  # Ollama's 100 MB floor leaves a 100 MB model on one connection
MAX_PART = 1000 * MB
SAVE_EVERY = 1.0  # seconds between writes of a part's progress file
TICK = 0.06  # seconds between progress reports, as Ollama's
# A part writes what it gathered, in a thread at its offset, once it has this many bytes or
# they are a progress report (TICK) old: few writes when fast, fresh progress when slow.
WRITE_EVERY = 1 << 20


class Part(msgspec.Struct):
    """One byte range of a blob and how much of it is already in the partial file."""

    N: int
    Offset: int
    Size: int
    Completed: int = 0

    @property
    def start(self) -> int:
        return self.Offset + self.Completed

    @property
    def end(self) -> int:
        return self.Offset + self.Size


@dataclass(frozen=True)
class Retry:
    """How long a part keeps trying: `attempts` failures in a row without a byte of progress."""

    attempts: int = 6
    first_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, failures: int) -> float:
        return min(self.first_delay * 2 ** (failures - 1), self.max_delay)


class _Transient(Exception):
    """A failure worth retrying: a dropped connection, a 5xx, an expired CDN link."""


def plan_parts(total: int) -> list[Part]:
    """Split a blob into up to 16 parts of total/16 bytes, each between 16 MB and 1 GB."""
    size = min(max(total // MAX_PARTS, MIN_PART), MAX_PART)
    return [Part(n, offset, min(size, total - offset)) for n, offset in enumerate(range(0, total, size))]


def parts_fit(parts: list[Part], total: int) -> bool:
    """Whether saved parts tile [0, total) exactly with sane progress: otherwise start over."""
    offset = 0
    for n, part in enumerate(sorted(parts, key=lambda p: p.Offset)):
        if part.N != n or part.Offset != offset or part.Size <= 0 or not 0 <= part.Completed <= part.Size:
            return False
        offset += part.Size
    return offset == total


@asynccontextmanager
async def follow(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], insecure: bool
) -> AsyncIterator[httpx.Response]:
    """GET `url`, following up to 10 redirects by hand so that none downgrades HTTPS to HTTP
    unless `insecure`, and the registry's token never goes on to another host (a CDN); yields
    the final response with its body unread."""
    for _ in range(11):
        async with client.stream("GET", url, headers=headers) as response:
            if not response.is_redirect:
                yield response
                return
            target = urljoin(url, response.headers["location"])
        if url.startswith("https:") and not target.startswith("https:") and not insecure:
            raise LlamagateError(502, f"refusing a redirect from {url} to insecure {target}")
        if urlsplit(target).netloc != urlsplit(url).netloc:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        url = target
    raise LlamagateError(502, f"too many redirects from {url}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class BlobDownload:
    """One blob on its way into the store, shared by every pull that needs it."""

    def __init__(self, owner: Downloads, digest: str, size: int, url: str, insecure: bool,
                 auth: dict[str, str]) -> None:
        self.owner = owner
        self.digest = digest
        self.hex = digest_hex(digest)
        self.total = size
        self.completed = 0
        self.url = url
        self.insecure = insecure
        self.auth = auth  # the registry's token (`follow` keeps it from the CDN)
        self.final = owner.store.blob_path(digest)
        self.partial = self.final.with_name(self.final.name + "-partial")
        self.downloaded = asyncio.Event()
        self.refs = 0
        self._direct: str | None = None
        self._direct_lock = asyncio.Lock()
        self._ranged = True
        self.task = asyncio.create_task(self._run())

    # Waiting ---------------------------------------------------------------------------------

    async def progress(self) -> AsyncIterator[int]:
        """The bytes downloaded so far, every TICK until all are in the partial file."""
        while not self.downloaded.is_set():
            if self.task.done():
                self.task.result()
            yield self.completed
            await asyncio.wait([self.task], timeout=TICK)
        yield self.completed

    async def wait(self) -> None:
        """Until the blob is verified and in place (or the error that stopped it)."""
        await asyncio.shield(self.task)

    # The work --------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            fd = await self._open_locked()
            try:
                if self.final.is_file():
                    # Another process finished this blob while we waited for its lock.
                    os.unlink(self.partial)
                    self.completed = self.total
                    self.downloaded.set()
                    return
                await self._download(fd)
                self.downloaded.set()
                await self._commit()
            finally:
                os.close(fd)
        finally:
            self.owner._forget(self)

    async def _open_locked(self) -> int:
        """The partial file, open and locked against another llamagate downloading the same blob
        into this store (a killed process's lock dies with it). Waits a little: a cancelled
        download of this process may still be letting go."""
        self.owner.store.blobs.mkdir(parents=True, exist_ok=True)
        for _ in range(50):
            try:
                fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise disk_error(f"download {self.digest}", e) if e.errno in DISK_FULL else e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # The holder before us may have renamed the file we opened into the blob.
                if os.fstat(fd).st_ino == os.stat(self.partial).st_ino:
                    return fd
            except (BlockingIOError, FileNotFoundError):
                pass
            os.close(fd)
            await asyncio.sleep(0.1)
        raise LlamagateError(409, f"another process is downloading {self.digest} into this store: "
                                  "pull again when it is done")

    def _part_path(self, n: int) -> Path:
        return self.partial.with_name(f"{self.partial.name}-{n}")

    def _saved_parts(self) -> Iterator[Path]:
        pattern = re.compile(re.escape(self.partial.name) + r"-\d+")
        return (p for p in self.final.parent.glob(self.partial.name + "-*") if pattern.fullmatch(p.name))

    def _load_parts(self, fd: int) -> list[Part]:
        """The parts saved by an earlier download of this blob, if they still describe the
        partial file; else none, and the download starts over."""
        try:
            parts = [msgspec.json.decode(p.read_bytes(), type=Part) for p in self._saved_parts()]
        except (OSError, msgspec.DecodeError):
            parts = []
        if parts and parts_fit(parts, self.total) and os.fstat(fd).st_size == self.total:
            return sorted(parts, key=lambda p: p.N)
        for path in self._saved_parts():
            path.unlink()
        os.ftruncate(fd, 0)
        return []

    def _save(self, part: Part) -> None:
        path = self._part_path(part.N)
        # A name of its own: a periodic save in a thread may still be writing when the part's
        # last save runs (a cancelled download); whichever lands last is never more than is in.
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(msgspec.json.encode(part))
        os.replace(tmp, path)

    def _discard(self) -> None:
        for path in [*self._saved_parts(), self.partial]:
            path.unlink(missing_ok=True)

    async def _download(self, fd: int) -> None:
        try:
            parts = self._load_parts(fd)
            if parts:
                log.info("resuming %s at %d of %d bytes", self.digest, sum(p.Completed for p in parts), self.total)
            else:
                parts = plan_parts(self.total)
            self._check_space(parts)
            if os.fstat(fd).st_size != self.total:
                os.ftruncate(fd, self.total)  # sparse: the parts fill it in
            await self._direct_url()
            if not self._ranged and len(parts) > 1:
                # The server ignores Range: one stream from byte 0 is all there is.
                for path in self._saved_parts():
                    path.unlink()
                parts = [Part(0, 0, self.total)]
            await asyncio.to_thread(lambda: [self._save(part) for part in parts])
            self.completed = sum(p.Completed for p in parts)
            try:
                async with asyncio.TaskGroup() as tasks:
                    for part in parts:
                        if part.Completed < part.Size:
                            tasks.create_task(self._fetch_part(part, fd))
            except BaseExceptionGroup as group:
                raise group.exceptions[0] from None
            await asyncio.to_thread(fsync_dup, os.dup(fd))
        except OSError as e:
            raise disk_error(f"download {self.digest}", e) if e.errno in DISK_FULL else e

    def _check_space(self, parts: list[Part]) -> None:
        need = sum(p.Size - p.Completed for p in parts)
        free = shutil.disk_usage(self.final.parent).free
        if need > free:
            raise LlamagateError(507, f"not enough disk space to download {self.digest}: "
                                      f"{need} bytes needed, {free} free")

    async def _direct_url(self) -> str:
        """The URL the bytes come from: the registry's blob URL after its redirects (a CDN).
        Probing it with a one-byte range also tells whether it honours Range."""
        async with self._direct_lock:
            failures = 0
            while self._direct is None:
                try:
                    async with follow(self.owner.client, self.url, {"Range": "bytes=0-0", **self.auth},
                                      self.insecure) as r:
                        self._check_probe(r)
                        self._direct, self._ranged = str(r.url), r.status_code == 206
                except (httpx.TransportError, _Transient) as e:
                    failures += 1
                    if failures >= self.owner.retry.attempts:
                        raise LlamagateError(502, f"download {self.digest}: {_reason(e)}") from e
                    await asyncio.sleep(self.owner.retry.delay(failures))
            return self._direct

    def _check_probe(self, r: httpx.Response) -> None:
        if r.status_code >= 500 or r.status_code == 429:
            raise _Transient(f"HTTP {r.status_code}")
        if r.status_code == 404:
            raise LlamagateError(502, f"download {self.digest}: the registry has no such blob")
        if r.status_code not in (200, 206):
            raise LlamagateError(502, f"download {self.digest}: unexpected status code {r.status_code}")
        m = re.fullmatch(r"bytes \d+-\d+/(\d+)", r.headers.get("content-range", ""))
        size = int(m.group(1)) if m else int(r.headers.get("content-length", -1)) if r.status_code == 200 else -1
        if size not in (-1, self.total):
            raise LlamagateError(502, f"download {self.digest}: the registry serves {size} bytes, "
                                      f"the manifest says {self.total}")

    async def _fetch_part(self, part: Part, fd: int) -> None:
        retry, failures = self.owner.retry, 0
        while part.Completed < part.Size:
            before = part.Completed
            try:
                await self._stream_part(part, fd)
            except (httpx.TransportError, _Transient) as e:
                failures = 0 if part.Completed > before else failures + 1
                if failures >= retry.attempts:
                    raise LlamagateError(502, f"download {self.digest}: {_reason(e)} "
                                              "(the partial download is kept: pull again to resume)") from e
                log.info("%s part %d: %s; retrying", self.digest[7:19], part.N, _reason(e))
                await asyncio.sleep(retry.delay(max(failures, 1)))
            finally:
                with suppress(OSError):  # a full disk already has its error on the way
                    self._save(part)

    async def _stream_part(self, part: Part, fd: int) -> None:
        url = await self._direct_url()
        headers = {"Range": f"bytes={part.start}-{part.end - 1}", "Accept-Encoding": "identity"}
        if urlsplit(url).netloc == urlsplit(self.url).netloc:
            headers.update(self.auth)  # the registry serves the bytes itself: it wants the token
        async with self.owner.client.stream("GET", url, headers=headers) as r:
            if r.status_code in (401, 403, 410):
                self._direct = None  # a signed CDN link expired: ask the registry again
                raise _Transient(f"HTTP {r.status_code} from the download link")
            if r.status_code >= 500 or r.status_code == 429:
                raise _Transient(f"HTTP {r.status_code}")
            if r.status_code not in (200, 206):
                raise LlamagateError(502, f"download {self.digest}: unexpected status code {r.status_code}")
            # A 200 carries the whole blob: skip to where this part resumes.
            position = part.start if r.status_code == 206 else 0
            last_save = last_write = time.monotonic()
            pending = bytearray()
            try:
                async for chunk in r.aiter_raw():
                    if position < part.start:
                        skip = min(len(chunk), part.start - position)
                        chunk, position = chunk[skip:], position + skip
                    chunk = chunk[: part.end - part.start - len(pending)]
                    pending += chunk
                    position += len(chunk)
                    now = time.monotonic()
                    if len(pending) >= WRITE_EVERY or now - last_write > TICK or part.start + len(pending) >= part.end:
                        await self._write(part, fd, pending)
                        last_write = now
                    if part.Completed >= part.Size:
                        return
                    if time.monotonic() - last_save > SAVE_EVERY:
                        await asyncio.to_thread(self._save, msgspec.structs.replace(part))
                        last_save = time.monotonic()
            except httpx.TransportError:
                await self._write(part, fd, pending)  # what came before the cut is good
                raise
            await self._write(part, fd, pending)
            raise _Transient("the connection closed early")

    async def _write(self, part: Part, fd: int, pending: bytearray) -> None:
        """The bytes gathered for `part`, written at its next offset, then counted as completed."""
        if pending:
            await asyncio.to_thread(write_at, os.dup(fd), bytes(pending), part.start)
            part.Completed += len(pending)
            self.completed += len(pending)
            pending.clear()

    async def _commit(self) -> None:
        got = await asyncio.to_thread(_sha256, self.partial)
        if got != self.hex:
            self._discard()
            raise LlamagateError(502, f"digest mismatch, file must be downloaded again: "
                                      f"want sha256:{self.hex}, got sha256:{got}")
        await asyncio.to_thread(self._rename)

    def _rename(self) -> None:
        os.replace(self.partial, self.final)
        fsync_dir(self.final.parent)
        for path in self._saved_parts():
            path.unlink(missing_ok=True)


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, httpx.TimeoutException):
        return f"timed out ({text})"
    return text


class Downloads:
    """The blob downloads in flight in this process, one per digest however many pulls wait."""

    def __init__(self, store: Store, client: httpx.AsyncClient, retry: Retry | None = None) -> None:
        self.store = store
        self.client = client
        self.retry = retry or Retry()
        self._active: dict[str, BlobDownload] = {}

    @contextmanager
    def join(self, digest: str, size: int, url: str, insecure: bool,
             auth: dict[str, str] | None = None) -> Iterator[BlobDownload]:
        """The download of `digest`, started unless one is running; when the last pull waiting
        on it leaves (its client went away), the download stops and its files stay for resume."""
        key = digest_hex(digest)
        download = self._active.get(key)
        if download is None:
            download = self._active[key] = BlobDownload(self, digest, size, url, insecure, auth or {})
        download.refs += 1
        try:
            yield download
        finally:
            download.refs -= 1
            if download.refs == 0 and not download.task.done():
                log.info("stopping the download of %s: no pull is waiting for it (kept for resume)", digest)
                self._forget(download)
                download.task.cancel()

    def _forget(self, download: BlobDownload) -> None:
        if self._active.get(download.hex) is download:
            del self._active[download.hex]

    def clean_leftovers(self, digest: str) -> None:
        """Part files of a blob that is already complete (a process killed after the rename)."""
        final = self.store.blob_path(digest)
        if digest_hex(digest) not in self._active:
            for path in final.parent.glob(final.name + "-partial*"):
                path.unlink(missing_ok=True)
