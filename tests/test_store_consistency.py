"""The store stays consistent: a delete racing a pull that shares a blob, or racing a runner's
start, loses nothing; the startup prune removes what Ollama's does, and only when it is old; a
full disk during a pull or an upload is a clear 507 with nothing half-written visible. The
SIGKILL sequence and the create race are in tests/test_store_kill.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Server, wait_until
from registries import OllamaRegistry, sha256
from supervisor.errors import LlamagateError
from supervisor.models.store import MODEL, Store
from supervisor.names import ModelName
from tinymodel import write_tiny_model

MB = 1_000_000
HOUR = 3600


def _env(registry: OllamaRegistry, **more: str) -> dict[str, str]:
    return {"LLAMAGATE_REGISTRY_MIRRORS": f"registry.ollama.ai={registry.url}", **more}


def verified(models: Path) -> list[str]:
    """Every manifest's name, once each of its blobs is checked: present, of its size, and
    hashing to its digest."""
    names = []
    for path in sorted((models / "manifests").rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        manifest = json.loads(path.read_bytes())
        for layer in [manifest["config"], *manifest["layers"]]:
            blob = models / "blobs" / layer["digest"].replace(":", "-")
            assert blob.is_file(), f"{path}: blob {layer['digest']} is missing"
            data = blob.read_bytes()
            assert len(data) == layer["size"] and hashlib.sha256(data).hexdigest() == layer["digest"][7:]
        names.append(str(path.relative_to(models / "manifests")))
    return names


def leftovers(models: Path) -> list[str]:
    """Files of the store that are neither a blob nor a manifest."""
    blobs = [p.name for p in (models / "blobs").iterdir() if not re.fullmatch(r"sha256-[0-9a-f]{64}", p.name)]
    temps = [p.name for p in (models / "manifests").rglob(".*")] if (models / "manifests").exists() else []
    return sorted(blobs + temps)


def unnamed_blobs(models: Path) -> list[str]:
    named = set()
    for path in (models / "manifests").rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            manifest = json.loads(path.read_bytes())
            named |= {la["digest"].replace(":", "-") for la in [manifest["config"], *manifest["layers"]]}
    blobs = (models / "blobs").glob("sha256-*")
    return sorted(p.name for p in blobs if "partial" not in p.name and p.name not in named)


def age(models: Path, seconds: float = 2 * HOUR) -> None:
    """Make every file in the store look `seconds` old: what a restart an hour after the kill finds."""
    then = time.time() - seconds
    for path in models.rglob("*"):
        os.utime(path, (then, then), follow_symlinks=False)


def pull(url: str, name: str) -> httpx.Response:
    return httpx.post(f"{url}/api/pull", json={"model": name, "stream": False}, timeout=120)


def upload(url: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.post(f"{url}/api/blobs/{digest}", content=data, timeout=120)
    assert r.status_code == 201, r.text
    return digest


def delete(url: str, name: str) -> httpx.Response:
    return httpx.request("DELETE", f"{url}/api/delete", json={"model": name}, timeout=60)


# A delete racing work that shares its blobs -----------------------------------------------------


def test_a_delete_during_a_pull_that_shares_a_blob_loses_nothing(tmp_path, registry, cdn):
    """The pull of `b` finds the shared layer already in the store and goes on to its own, slow
    one; `a`, the only model naming the shared layer so far, is deleted meanwhile. Without the
    pull's pin the delete prunes it, and the pull's manifest names a blob that is gone."""
    shared, own = os.urandom(2 * MB), os.urandom(2 * MB)
    registry.publish("library/a:latest", [(MODEL, shared)])
    registry.publish("library/b:latest", [(MODEL, shared), ("application/vnd.ollama.image.adapter", own)])
    srv = Server(tmp_path, env=_env(registry))
    try:
        assert pull(srv.url, "a").json()["status"] == "success"
        pause = cdn.blobs[sha256(own)]
        pause.pause_after = 0
        result: list[httpx.Response] = []
        puller = threading.Thread(target=lambda: result.append(pull(srv.url, "b")))
        puller.start()
        # The pull has passed the shared layer (in the store) and waits for its own.
        assert wait_until(lambda: cdn.served_for(sha256(own)), timeout=20)
        assert delete(srv.url, "a").status_code == 200
        pause.pause_after = None
        pause.resume.set()
        puller.join(60)
        assert result and result[0].status_code == 200 and result[0].json()["status"] == "success", result
        assert verified(srv.models) == ["registry.ollama.ai/library/b/latest"]
        assert (srv.models / "blobs" / f"sha256-{sha256(shared)}").is_file()
    finally:
        srv.stop()


def test_a_delete_during_a_runner_start_loses_nothing(tmp_path, tiny_gguf, padded_gguf, llama_server_binary):
    """A request starts the model's runner while the model is deleted: the request is served
    (its pin keeps the GGUF until it ends) or told the model is gone, never a 500; the store
    ends with neither the model nor its blobs, and the other model untouched."""
    srv = Server(tmp_path)
    try:
        srv.create("keep", tiny_gguf)
        data = padded_gguf.read_bytes()
        for delay in (0.0, 0.1):
            files = {"doomed.gguf": upload(srv.url, data)}
            r = httpx.post(f"{srv.url}/api/create", json={"model": "doomed", "files": files, "stream": False},
                           timeout=60)
            assert r.status_code == 200, r.text
            result: list[httpx.Response] = []
            body = {"model": "doomed", "prompt": "hi", "stream": False, "options": {"num_predict": 3}}
            asker = threading.Thread(target=lambda: result.append(
                httpx.post(f"{srv.url}/api/generate", json=body, timeout=60)))
            asker.start()
            time.sleep(delay)
            assert delete(srv.url, "doomed").status_code == 200
            asker.join(60)
            assert result[0].status_code in (200, 404), result[0].text
            # The GGUF goes once the request's pin does.
            assert wait_until(lambda: unnamed_blobs(srv.models) == [], timeout=10), unnamed_blobs(srv.models)
            assert verified(srv.models) == ["registry.ollama.ai/library/keep/latest"]
        r = httpx.post(f"{srv.url}/api/generate", json={"model": "keep", "prompt": "hi", "stream": False,
                                                        "options": {"num_predict": 3}}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        srv.stop()


# The startup prune ----------------------------------------------------------------------------


def test_the_startup_prune_spares_what_is_young_or_named(tmp_path, tiny_gguf):
    store = Store(tmp_path)
    layer = store.add_blob_file(tiny_gguf, MODEL)
    store.create(ModelName.parse("kept"), layer)
    orphan = store.add_blob_bytes(b"no manifest names me", MODEL)
    blobs, library = tmp_path / "blobs", tmp_path / "manifests" / "registry.ollama.ai" / "library"
    junk = [blobs / f"sha256-{'a' * 64}-partial", blobs / f"sha256-{'a' * 64}-partial-0", blobs / ".upload-x.tmp",
            library / ".t.x.tmp"]
    for path in junk:
        path.write_bytes(b"x")
    empty = tmp_path / "manifests" / "registry.ollama.ai" / "gone" / "model"
    empty.mkdir(parents=True)
    assert store.prune() == 0  # everything is young
    assert all(p.exists() for p in junk) and store.has_blob(orphan.digest)
    age(tmp_path)
    assert store.prune() == len(junk) + 1
    assert not any(p.exists() for p in junk) and not store.has_blob(orphan.digest)
    assert not empty.exists() and not empty.parent.exists()
    assert verified(tmp_path) == ["registry.ollama.ai/library/kept/latest"]


# A full disk ----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 12 MB tmpfs for the store, mounted by the test (CI runs as root; without root there is
    no honest way to fill a disk, and the test fails saying so)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True)
    assert done.returncode == 0, f"a disk-full test mounts a tmpfs, which needs root: {done.stderr.decode()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_an_upload_and_a_pull_is_a_clear_error(small_disk, registry, cdn):
    env = {**_env(registry), "OLLAMA_MODELS": str(small_disk / "models")}
    srv = Server(small_disk.parent, env=env)
    try:
        # An upload bigger than the disk: 507, and no temporary file left.
        data = os.urandom(16 * MB)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = httpx.post(f"{srv.url}/api/blobs/{digest}", content=data, timeout=120)
        assert r.status_code == 507, r.text
        assert "not enough disk space" in r.json()["error"] and "No space left on device" in r.json()["error"]
        assert list((small_disk / "models" / "blobs").iterdir()) == []
        # A pull that fits when it starts, until something else fills the disk.
        layer = os.urandom(8 * MB)
        registry.publish("library/toolarge:latest", [(MODEL, layer)], pause_after=2 * MB)
        result: list[httpx.Response] = []
        puller = threading.Thread(target=lambda: result.append(pull(srv.url, "toolarge")))
        puller.start()
        assert wait_until(lambda: cdn.blobs[sha256(layer)].sent >= 2 * MB, timeout=20)
        (small_disk / "filler").write_bytes(b"\0" * (8 * MB))  # another program takes the room
        cdn.blobs[sha256(layer)].pause_after = None
        cdn.blobs[sha256(layer)].resume.set()
        puller.join(60)
        assert result[0].status_code == 507, result[0].text
        assert "not enough disk space to download" in result[0].json()["error"]
        # Nothing half-written is visible: no manifest, no blob under its final name.
        assert not (small_disk / "models" / "manifests").exists() or verified(small_disk / "models") == []
        assert not (small_disk / "models" / "blobs" / f"sha256-{sha256(layer)}").exists()
        # Room again: the same pull resumes and completes.
        (small_disk / "filler").unlink()
        assert pull(srv.url, "toolarge").json()["status"] == "success"
        assert verified(small_disk / "models") == ["registry.ollama.ai/library/toolarge/latest"]
    finally:
        srv.stop()


def test_a_full_disk_during_a_create_is_a_clear_error(small_disk, tmp_path):
    """A quantize whose output doesn't fit, and a create whose small layers don't: 507 each, no
    model, nothing half-written; with room again the same create succeeds."""
    f16 = write_tiny_model(tmp_path / "tiny-f16.gguf", f16=True)
    models = small_disk / "models"
    srv = Server(small_disk.parent, env={"OLLAMA_MODELS": str(models)})
    try:
        digest = upload(srv.url, f16.read_bytes())
        before = sorted(p.name for p in (models / "blobs").iterdir())
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (free - f16.stat().st_size // 4))  # room for a quarter of the output
        body = {"model": "squeezed", "files": {"tiny-f16.gguf": digest}, "quantize": "q8_0", "stream": False}
        r = httpx.post(f"{srv.url}/api/create", json=body, timeout=120)
        assert r.status_code == 507, r.text
        assert "not enough disk space" in r.json()["error"]
        assert sorted(p.name for p in (models / "blobs").iterdir()) == before
        # Not even room for a system prompt's layer.
        filler.write_bytes(b"\0" * (free - 1))
        body = {"model": "squeezed", "files": {"tiny-f16.gguf": digest}, "system": "x" * 20_000, "stream": False}
        r = httpx.post(f"{srv.url}/api/create", json=body, timeout=120)
        assert r.status_code == 507, r.text
        assert "not enough disk space" in r.json()["error"]
        assert sorted(p.name for p in (models / "blobs").iterdir()) == before
        assert not (models / "manifests").exists() or verified(models) == []
        filler.unlink()
        r = httpx.post(f"{srv.url}/api/create", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert verified(models) == ["registry.ollama.ai/library/squeezed/latest"]
    finally:
        srv.stop()


def test_two_deletes_of_one_model_at_once_are_one_200_and_one_404(tmp_path, tiny_gguf):
    store = Store(tmp_path)
    model = store.create(ModelName.parse("once"), store.add_blob_file(tiny_gguf, MODEL))

    async def both() -> list[object]:
        return await asyncio.gather(store.delete(model), store.delete(model), return_exceptions=True)

    first, second = asyncio.run(both())
    assert isinstance(first, list) and len(first) == 2  # the GGUF and the config blob
    assert isinstance(second, LlamagateError) and second.status == 404
    assert list((tmp_path / "blobs").iterdir()) == [] and not any((tmp_path / "manifests").rglob("*"))
