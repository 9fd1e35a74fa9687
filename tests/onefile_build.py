"""dist/llamagate, the PyInstaller one-file build that tests/test_onefile.py runs. It takes about a
minute of one core, so the session starts it in the background (tests/conftest.py) while the first
tests, which mostly wait on a one-thread llama-server, run; it is rebuilt only when a source is newer."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ONEFILE = ROOT / "dist" / "llamagate"
_LOG = ROOT / "build" / "onefile-build.log"
_build: subprocess.Popen | None = None


def _stale() -> bool:
    sources = [*ROOT.glob("proxy/**/*.py"), *ROOT.glob("supervisor/**/*.py"), ROOT / "pyproject.toml",
               ROOT / "contrib" / "build-onefile.sh", ROOT / "contrib" / "onefile_main.py"]
    return not ONEFILE.is_file() or ONEFILE.stat().st_mtime < max(p.stat().st_mtime for p in sources)


def start() -> None:
    """Start the build if it is needed and not under way."""
    global _build
    if _build is None and _stale():
        _LOG.parent.mkdir(exist_ok=True)
        with open(_LOG, "wb") as log:
            _build = subprocess.Popen([str(ROOT / "contrib" / "build-onefile.sh")], cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT)


def built() -> Path:
    """dist/llamagate, once the build (started now if it wasn't) has finished."""
    start()
    if _build is not None:
        assert _build.wait(timeout=900) == 0, _LOG.read_text()[-4000:]
    return ONEFILE
