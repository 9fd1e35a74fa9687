"""Which llama.cpp build a llama-server binary is, for `llamagate --version`: read from its
llamagate-build.json when it is one of our downloaded releases, else from its `--version` output,
kept in the runtime cache per path, size and mtime so that asking again costs no process; and the
smoke test that runs it (light: `--version` may need it, the installer does)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from supervisor.errors import LlamagateError
from supervisor.runtime.layout import META

CACHE = "llama-server-versions.json"
_RELEASE = re.compile(r"(\d+) \(([0-9a-f]+)\)")  # llama.cpp's "version: 7123 (abcdef0)"


def _short(version: str) -> str:
    """`7123 (abcdef0)` as its release tag, `b7123 (abcdef0)`; other builds' text as printed."""
    m = _RELEASE.fullmatch(version)
    return f"b{m[1]} ({m[2]})" if m else version


def build_tag(exe: Path, runtime_dir: Path) -> str:
    """The build of `exe`, e.g. `b7123 (abcdef0)`; a binary that doesn't run says so."""
    try:
        return _short(json.loads((exe.parent / META).read_bytes())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not one of ours
    try:
        st = exe.stat()
    except OSError as e:
        return f"unreadable ({e.strerror})"
    key, stamp = str(exe.resolve()), [st.st_size, st.st_mtime_ns]
    cache_file = runtime_dir / CACHE
    try:
        cache = json.loads(cache_file.read_bytes())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("version"), str):
        return _short(hit["version"])
    try:
        version = smoke_test(exe)
    except LlamagateError as e:
        return "unusable: " + e.message.splitlines()[0]
    cache[key] = {"stamp": stamp, "version": version}
    try:
        runtime_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{CACHE}.{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only cache: the next --version runs it again
    return _short(version)


def smoke_test(exe: Path) -> str:
    """Run `llama-server --version` as the runner will run it (cwd its folder, clean environment)
    and return the version it prints; broken library links or a wrong platform fail here."""
    import subprocess  # here: `--version` reads the cache and needs no process most of the time

    from supervisor.runtime.environment import clean_env

    try:
        out = subprocess.run([str(exe), "--version"], cwd=exe.parent, env=clean_env(),
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LlamagateError(500, f"smoke test `{exe} --version` failed: {e}") from e
    text = (out.stdout + out.stderr).strip()
    line = next((ln for ln in text.splitlines() if "version:" in ln), None)
    if out.returncode != 0 or line is None:
        raise LlamagateError(500, f"smoke test `{exe} --version` exited with {out.returncode}:\n{text[-2000:]}")
    return line.split("version:", 1)[1].strip()
