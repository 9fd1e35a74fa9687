"""`/api/create` with `quantize`: an F16 GGUF written with the `gguf` package, quantized by the real
llama-quantize of the llama-server build in use (behind a wrapper that can hold it, to watch the
progress stream while it works and a client leave); bad types and sources refused as Ollama refuses
them; a failed or abandoned quantize leaves nothing in the store."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from conftest import Server, wait_until
from tinymodel import write_tiny_model


@pytest.fixture(scope="module")
def f16_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("f16") / "tiny-f16.gguf", f16=True)


def _files(srv: Server) -> set[str]:
    """Every file in the store's blobs folder: blobs, and any temporary file left behind."""
    return {p.name for p in (srv.models / "blobs").iterdir()}


def _details(srv: Server, name: str) -> dict:
    return httpx.post(f"{srv.url}/api/show", json={"model": name}).json()["details"]


def test_quantize_streams_progress_and_the_model_answers(srv: Server, f16_gguf: Path):
    client = ollama.Client(srv.url)
    digest = client.create_blob(f16_gguf)
    lines = list(client.create(model="tiny-q8", files={"tiny-f16.gguf": digest}, quantize="q8_0", stream=True))
    statuses = [line.status for line in lines]
    assert statuses[0] == "parsing GGUF"
    progress = [line for line in lines if line.status == "quantizing F16 model to Q8_0"]
    # One line before the first tensor, then one per tensor (21 in the tiny model), to the whole size.
    assert len(progress) == 22 and not progress[0].completed and progress[-1].completed == f16_gguf.stat().st_size
    assert all(p.total == f16_gguf.stat().st_size for p in progress)
    assert [p.completed or 0 for p in progress] == sorted(p.completed or 0 for p in progress)
    assert statuses[statuses.index("verifying conversion") - 1] == "quantizing F16 model to Q8_0"
    new_layer = next(s for s in statuses if s.startswith("creating new layer"))
    assert digest not in new_layer, "the quantized GGUF is a layer of its own"
    assert statuses[-2:] == ["writing manifest", "success"]
    assert _details(srv, "tiny-q8")["quantization_level"] == "Q8_0"
    quantized = srv.models / "blobs" / new_layer.split()[-1].replace(":", "-")
    assert quantized.stat().st_size < f16_gguf.stat().st_size * 0.7
    assert client.generate(model="tiny-q8", prompt="hi", options={"num_predict": 3}).eval_count == 3
    assert not [f for f in _files(srv) if not f.startswith("sha256-")], "no temporary file left"


def test_cli_create_quantize(srv: Server, f16_gguf: Path):
    modelfile = f16_gguf.parent / "Modelfile"
    modelfile.write_text(f"FROM {f16_gguf}\nPARAMETER temperature 0.2\n")
    out = srv.cli("create", "tiny-q4", "-f", str(modelfile), "-q", "q4_K_M").stdout.splitlines()
    # Not a terminal: the quantizing step once, at its end; every other status once.
    assert "quantizing F16 model to Q4_K_M 100%" in out and out.count("quantizing F16 model to Q4_K_M 100%") == 1
    assert out[-2:] == ["writing manifest", "success"]
    assert _details(srv, "tiny-q4")["quantization_level"] == "Q4_K_M"
    r = httpx.post(f"{srv.url}/api/generate", json={"model": "tiny-q4", "prompt": "hi", "stream": False,
                                                     "options": {"num_predict": 2}}, timeout=60)
    assert r.status_code == 200 and r.json()["eval_count"] == 2


def test_quantize_errors(srv: Server, f16_gguf: Path):
    digest = ollama.Client(srv.url).create_blob(f16_gguf)
    files = {"tiny-f16.gguf": digest}
    r = httpx.post(f"{srv.url}/api/create", json={"model": "x", "files": files, "quantize": "q9_x"})
    assert r.status_code == 400 and r.json()["error"] == (
        "unsupported quantization type q9_x - supported types are F32, F16, BF16, Q8_0, Q4_K_S, Q4_K_M, Q4_0, "
        "Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q5_K_S, Q5_K_M, Q6_K")
    # A quantized model is not quantized again (from a model in the store, as with files).
    r = httpx.post(f"{srv.url}/api/create", json={"model": "x", "from": "tiny-q8", "quantize": "q4_K_M"})
    assert r.status_code == 400 and r.json()["error"] == "quantization is only supported for F16, BF16 and F32 models"
    assert "x:latest" not in {m["name"] for m in httpx.get(f"{srv.url}/api/tags").json()["models"]}
    # The type it already has: nothing to do, the same layer. `quantization` is the older name.
    r = httpx.post(f"{srv.url}/api/create", json={"model": "same", "files": files, "quantization": "F16"})
    statuses = [json.loads(line)["status"] for line in r.text.splitlines()]
    assert f"using existing layer {digest}" in statuses and not any("quantizing" in s for s in statuses)


def test_a_failed_quantize_leaves_nothing(srv: Server, f16_gguf: Path, tmp_path: Path):
    """A GGUF whose header reads but whose tensor data is cut short: llama-quantize fails after
    the stream began, so the stream ends with its error line; with `stream: false` it is a 500."""
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(f16_gguf.read_bytes()[: f16_gguf.stat().st_size // 2])
    digest = ollama.Client(srv.url).create_blob(cut)
    before = _files(srv)
    r = httpx.post(f"{srv.url}/api/create", json={"model": "broken", "files": {"cut.gguf": digest}, "quantize": "q8_0"})
    last = json.loads(r.text.splitlines()[-1])
    assert r.status_code == 200 and last["error"].startswith("llama-quantize failed: "), r.text
    r = httpx.post(f"{srv.url}/api/create", json={"model": "broken", "files": {"cut.gguf": digest},
                                                   "quantize": "q8_0", "stream": False})
    assert r.status_code == 500 and r.json()["error"].startswith("llama-quantize failed: ")
    assert _files(srv) == before, "no half-written blob"
    assert "broken:latest" not in {m["name"] for m in httpx.get(f"{srv.url}/api/tags").json()["models"]}


# The llama-quantize beside the server's llama-server: the real one, unless the test holds it (no
# `go` file): then it reports a first tensor and waits for `go` (or to be killed) before running.
_HELD_QUANTIZE = """#!{python}
import os, sys, time
open({pidfile!r}, "w").write(str(os.getpid()))
if not os.path.exists({go!r}):
    print("[   1/   2] first.weight - converting", flush=True)
    while not os.path.exists({go!r}):
        time.sleep(0.05)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory, llama_server_binary: Path) -> Iterator[tuple[Server, Path]]:
    """A server whose llama-server (the real one, linked) has the llama-quantize above beside it."""
    tmp = tmp_path_factory.mktemp("quantize")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-server").symlink_to(llama_server_binary)
    tool = bin_dir / "llama-quantize"
    tool.write_text(_HELD_QUANTIZE.format(python=sys.executable, pidfile=str(tmp / "pid"), go=str(tmp / "go"),
                                          real=str(llama_server_binary.parent / "llama-quantize")))
    tool.chmod(0o755)
    (tmp / "srv").mkdir()
    server = Server(tmp / "srv", "--llama-server", str(bin_dir / "llama-server"))
    yield server, tmp
    server.stop()


@pytest.fixture
def srv(held: tuple[Server, Path]) -> Server:
    """The server, its llama-quantize let run at once."""
    (held[1] / "go").touch()
    return held[0]


@pytest.fixture
def slow(held: tuple[Server, Path]) -> tuple[Server, Path]:
    """The server, its llama-quantize held until the test creates `go`."""
    for name in ("pid", "go"):
        (held[1] / name).unlink(missing_ok=True)
    return held


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_progress_streams_while_llama_quantize_works(slow, f16_gguf: Path):
    srv, tmp = slow
    digest = ollama.Client(srv.url).create_blob(f16_gguf)
    body = {"model": "slow-q8", "files": {"tiny-f16.gguf": digest}, "quantize": "q8_0"}
    with httpx.stream("POST", f"{srv.url}/api/create", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["status"] == "parsing GGUF"
        assert "completed" not in json.loads(next(lines))  # 0, omitted as Ollama omits it
        first = json.loads(next(lines))
        # The first tensor's line arrives while llama-quantize still runs and nothing is written.
        assert first["completed"] == first["total"] // 2
        assert _alive(int((tmp / "pid").read_text()))
        assert "slow-q8:latest" not in {m["name"] for m in httpx.get(f"{srv.url}/api/tags").json()["models"]}
        (tmp / "go").touch()
        rest = [json.loads(line) for line in lines]
    assert rest[-1] == {"status": "success"}
    assert _details(srv, "slow-q8")["quantization_level"] == "Q8_0"


def test_a_client_that_leaves_stops_llama_quantize(slow, f16_gguf: Path):
    srv, tmp = slow
    digest = ollama.Client(srv.url).create_blob(f16_gguf)
    before = _files(srv)
    body = {"model": "left", "files": {"tiny-f16.gguf": digest}, "quantize": "q8_0"}
    with httpx.stream("POST", f"{srv.url}/api/create", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        pid = int((tmp / "pid").read_text())
        assert _alive(pid) and not (srv.models / "manifests" / "registry.ollama.ai" / "library" / "left").exists()
    assert wait_until(lambda: not _alive(pid), timeout=10), "llama-quantize outlived its client"
    assert wait_until(lambda: _files(srv) == before), "the pending blob is removed"
    time.sleep(0.2)
    assert not (srv.models / "manifests" / "registry.ollama.ai" / "library" / "left").exists()
    assert os.path.exists(srv.models / "blobs" / digest.replace(":", "-"))
