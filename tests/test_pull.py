"""Pulling models: Ollama's registry protocol and Hugging Face's against loopback registries,
resume after a dropped connection or a killed process, verification, shared downloads, disk
full, offline use, and an existing Ollama store served in place."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pty
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import msgspec
import ollama
import pytest
from conftest import Server, free_port, llamagate_cmd, wait_until
from registries import (
    LICENSE,
    MODEL,
    PARAMS,
    Cdn,
    HuggingFace,
    OllamaRegistry,
    check_layer_progress,
    config_blob,
    manifest_bytes,
    sha256,
)
from tinymodel import write_tiny_model

from proxy.cli.progress import PullDisplay
from supervisor.pull import registry as reg
from supervisor.config import default_models_dir, parse_mirrors
from supervisor.pull.download import Downloads, Part, Retry, parts_fit, plan_parts
from supervisor.errors import LlamagateError
from supervisor.names import ModelName
from supervisor.version import OLLAMA_VERSION
from supervisor.models.store import Store

MB = 1_000_000


# Loopback registries and a server that uses them ----------------------------------------------


@pytest.fixture(scope="module")
def hf(cdn):
    server = HuggingFace(cdn)
    yield server
    server.close()


def mirrors(registry: OllamaRegistry, hf: HuggingFace) -> dict[str, str]:
    value = f"registry.ollama.ai={registry.url},hf.co={hf.url},huggingface.co={hf.url}"
    return {"LLAMAGATE_REGISTRY_MIRRORS": value}


@pytest.fixture(scope="module")
def server(tmp_path_factory, registry, hf, llama_server_binary):
    srv = Server(tmp_path_factory.mktemp("pull"), env=mirrors(registry, hf))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tiny_bytes(tiny_gguf: Path) -> bytes:
    return tiny_gguf.read_bytes()


def lines(url: str, body: dict) -> tuple[int, list[dict]]:
    """POST /api/pull and every NDJSON object it streams."""
    with httpx.stream("POST", f"{url}/api/pull", json=body, timeout=120) as r:
        return r.status_code, [json.loads(line) for line in r.iter_lines() if line]


def blob_files(models: Path, hex_digest: str) -> list[str]:
    return sorted(p.name for p in (models / "blobs").glob(f"sha256-{hex_digest}*"))


# Pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "insecure", "mirror", "url"),
    [
        ("llama3.2", False, {}, "https://registry.ollama.ai"),
        ("hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M", False, {}, "https://hf.co"),
        ("huggingface.co/u/r", False, {}, "https://huggingface.co"),
        ("127.0.0.1:5000/ns/m:t", False, {}, "https://127.0.0.1:5000"),
        ("127.0.0.1:5000/ns/m:t", True, {}, "http://127.0.0.1:5000"),
        ("http://127.0.0.1:5000/ns/m:t", True, {}, "http://127.0.0.1:5000"),
        ("llama3.2", False, {"registry.ollama.ai": "http://127.0.0.1:9"}, "http://127.0.0.1:9"),
        ("HF.co/u/r", False, {"hf.co": "https://mirror.example/hf"}, "https://mirror.example/hf"),
    ],
)
def test_registry_url_is_https_unless_insecure(name, insecure, mirror, url):
    assert reg.registry_url(ModelName.parse(name), insecure, mirror) == url


def test_http_names_need_insecure():
    with pytest.raises(LlamagateError) as e:
        reg.registry_url(ModelName.parse("http://127.0.0.1:5000/ns/m"), False, {})
    assert e.value.status == 400 and "insecure protocol http" in e.value.message


def test_mirrors_setting():
    assert parse_mirrors("") == {}
    assert parse_mirrors("HF.co=http://127.0.0.1:1/, registry.ollama.ai=https://m.example/v") == {
        "hf.co": "http://127.0.0.1:1", "registry.ollama.ai": "https://m.example/v"}
    for bad in ("hf.co", "hf.co=ftp://x", "=http://x"):
        with pytest.raises(ValueError, match="LLAMAGATE_REGISTRY_MIRRORS"):
            parse_mirrors(bad)


@pytest.mark.parametrize(
    ("total", "sizes"),
    [
        (5, [5]),
        (40 * MB, [16 * MB, 16 * MB, 8 * MB]),
        (3200 * MB, [200 * MB] * 16),
        (20_000 * MB, [1000 * MB] * 20),
    ],
)
def test_plan_parts(total, sizes):
    parts = plan_parts(total)
    assert [p.Size for p in parts] == sizes and parts_fit(parts, total)
    assert [p.N for p in parts] == list(range(len(parts)))


def test_saved_parts_must_tile_the_blob():
    assert parts_fit([Part(0, 0, 10, 3), Part(1, 10, 5, 5)], 15)
    assert not parts_fit([Part(0, 0, 10), Part(1, 10, 5)], 16)  # a different size
    assert not parts_fit([Part(0, 0, 10), Part(1, 11, 4)], 15)  # a hole
    assert not parts_fit([Part(0, 0, 10, 11), Part(1, 10, 5)], 15)  # more done than exists


def test_store_location_prefers_an_existing_ollama_store(tmp_path):
    own, ollama_dir = tmp_path / "own", tmp_path / ".ollama" / "models"
    assert default_models_dir(own, ollama_dir) == own
    ollama_dir.mkdir(parents=True)
    assert default_models_dir(own, ollama_dir) == ollama_dir
    own.mkdir()
    assert default_models_dir(own, ollama_dir) == own  # llamagate's own store says otherwise


def test_user_agent_names_the_ollama_version_we_follow():
    assert reg.USER_AGENT.startswith(f"ollama/{OLLAMA_VERSION} (")


def test_progress_display():
    now = [0.0]
    display = PullDisplay(clock=lambda: now[0])
    d = "sha256:" + "ab" * 32
    display.update({"status": "pulling manifest"})
    display.update({"status": "pulling ababababab", "digest": d, "total": 100 * MB})
    now[0] = 2.0
    display.update({"status": "pulling ababababab", "digest": d, "total": 100 * MB, "completed": 20 * MB})
    assert display.render() == [
        "pulling manifest",
        "pulling abababababab...  20% ▕█████                    ▏ 20 MB/100 MB  10 MB/s  8s",
    ]
    now[0] = 10.0
    display.update({"status": "pulling ababababab", "digest": d, "total": 100 * MB, "completed": 100 * MB})
    display.update({"status": "verifying sha256 digest"})
    display.update({"status": "success"})
    assert display.render() == [
        "pulling manifest",
        "pulling abababababab... 100% ▕█████████████████████████▏ 100 MB",
        "verifying sha256 digest",
        "success",
    ]


# Downloads in this process: a network failure and the resume --------------------------------


def test_network_failure_keeps_the_partial_download_for_a_resume(tmp_path):
    data = os.urandom(3 * MB)
    hex_digest = sha256(data)
    store = Store(tmp_path)

    async def download(url: str) -> None:
        async with httpx.AsyncClient() as client:
            downloads = Downloads(store, client, Retry(attempts=2, first_delay=0.5))
            with downloads.join(f"sha256:{hex_digest}", len(data), url, False) as blob:
                async for _ in blob.progress():
                    pass
                await blob.wait()

    first = Cdn()
    first.add(data, drop_at=MB)
    url = f"{first.url}/blob/{hex_digest}"

    def go_down() -> None:
        wait_until(lambda: first.bytes_for(hex_digest) >= MB)
        first.close()  # and stays down: every retry is refused

    threading.Thread(target=go_down).start()
    with pytest.raises(LlamagateError) as e:
        asyncio.run(download(url))
    assert e.value.status == 502 and "pull again to resume" in e.value.message
    assert "connect" in e.value.message.lower() or "refused" in e.value.message.lower()
    assert blob_files(tmp_path, hex_digest) == [f"sha256-{hex_digest}-partial", f"sha256-{hex_digest}-partial-0"]
    saved = (tmp_path / "blobs" / f"sha256-{hex_digest}-partial-0").read_bytes()
    # What Ollama's part decoder reads (server/download.go), so `ollama pull` resumes it too.
    assert saved == b'{"N":0,"Offset":0,"Size":%d,"Completed":%d}' % (len(data), MB)

    second = Cdn()
    second.add(data)
    try:
        asyncio.run(download(f"{second.url}/blob/{hex_digest}"))
    finally:
        second.close()
    ranges = [(s.start, s.end, s.sent) for s in second.served_for(hex_digest) if s.end - s.start > 1]
    assert ranges == [(MB, len(data), len(data) - MB)]
    assert blob_files(tmp_path, hex_digest) == [f"sha256-{hex_digest}"]
    assert (tmp_path / "blobs" / f"sha256-{hex_digest}").read_bytes() == data


def test_a_second_downloader_on_the_store_waits_and_finds_the_blob(tmp_path):
    """Two download managers on one store, as two llamagate processes would be: the partial
    file's lock makes the second wait, then find the finished blob instead of fetching it."""
    data = os.urandom(2 * MB)
    hex_digest = sha256(data)
    cdn = Cdn()
    cdn.add(data, throttle=0.05)  # about 1.5 s: the second starts while the first is at it
    url = f"{cdn.url}/blob/{hex_digest}"

    async def fetch(store: Store) -> list[int]:
        async with httpx.AsyncClient() as client:
            with Downloads(store, client).join(f"sha256:{hex_digest}", len(data), url, False) as blob:
                seen = [c async for c in blob.progress()]
                await blob.wait()
                return seen

    async def both() -> list[list[int]]:
        first = asyncio.create_task(fetch(Store(tmp_path)))
        await asyncio.sleep(0.3)
        return await asyncio.gather(first, fetch(Store(tmp_path)))

    try:
        first, second = asyncio.run(both())
    finally:
        cdn.close()
    assert first[-1] == second[-1] == len(data)
    assert 0 < first[len(first) // 2] < len(data) and len(second) > 5 and set(second[:-1]) == {0}  # it waited
    assert cdn.bytes_for(hex_digest) == len(data) + 1  # one download and its one-byte probe
    assert blob_files(tmp_path, hex_digest) == [f"sha256-{hex_digest}"]


# Through the server ----------------------------------------------------------------------------


def test_pull_then_chat(server, registry, cdn, smollm2):
    gguf = smollm2.read_bytes()
    raw = registry.publish(
        "library/smollm2:135m",
        [(MODEL, gguf), (LICENSE, b"Apache License 2.0"), (PARAMS, b'{"stop":["<|im_end|>"]}')],
        throttle=0.003,
    )
    manifest = json.loads(raw)
    digests = [la["digest"] for la in manifest["layers"]] + [manifest["config"]["digest"]]
    client = ollama.Client(host=server.url)

    events = list(client.pull("smollm2:135m", stream=True))

    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    check_layer_progress(events, digests, "pulling")
    model_progress = [e.completed or 0 for e in events if e.digest == digests[0]]
    assert len(set(model_progress)) >= 3 and model_progress[-1] == len(gguf)

    # The GGUF came in parallel ranged parts, no byte twice.
    ranges = sorted((s.start, s.end) for s in cdn.served_for(digests[0][7:]) if s.end - s.start > 1)
    assert len(ranges) == 7 and ranges[0][0] == 0 and ranges[-1][1] == len(gguf)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert cdn.bytes_for(digests[0][7:]) - 1 == len(gguf)  # plus the one-byte probe
    manifest_requests = [h for m, p, h in registry.requests if "/manifests/" in p]
    assert manifest_requests[0]["Accept"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest_requests[0]["User-Agent"].startswith("ollama/")

    listed = {m.model: m for m in client.list().models}
    assert listed["smollm2:135m"].digest == hashlib.sha256(raw).hexdigest()
    assert (server.models / "manifests/registry.ollama.ai/library/smollm2/135m").read_bytes() == raw
    answer = client.chat(model="smollm2:135m", messages=[{"role": "user", "content": "What is the capital of France?"}],
                         options={"num_predict": 16})
    assert answer.message.content.strip()

    # Again: every blob is already there, nothing is downloaded, the manifest is checked.
    served_before = len(cdn.served)
    again = list(client.pull("smollm2:135m", stream=True))
    assert len(cdn.served) == served_before
    assert [(e.digest, e.completed) for e in again if e.digest] == [
        (d, e.total) for d, e in zip(digests, [e for e in again if e.digest])]
    assert again[-1].status == "success"


def test_unknown_model_or_tag(server, registry, tiny_bytes):
    registry.publish("test/known:v1", [(MODEL, tiny_bytes)])
    for name in ("test/known:v2", "test/nosuch"):
        r = httpx.post(f"{server.url}/api/pull", json={"model": name, "stream": False}, timeout=30)
        assert r.status_code == 404 and r.json() == {"error": "pull model manifest: file does not exist"}
        with pytest.raises(ollama.ResponseError) as e:
            list(ollama.Client(host=server.url).pull(name, stream=True))
        assert e.value.status_code == 404 and "file does not exist" in e.value.error
    assert not (server.models / "manifests/registry.ollama.ai/test/known/v2").exists()
    r = httpx.post(f"{server.url}/api/pull", json={"model": "bad name!"}, timeout=30)
    assert r.status_code == 400 and "invalid model name" in r.json()["error"]
    r = httpx.post(f"{server.url}/api/pull", json={"model": "test/known:v1", "stream": False}, timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "success"}
    # ollama-js and Continue send the deprecated `name`.
    lines = httpx.post(f"{server.url}/api/pull", json={"name": "test/known:v1"}, timeout=30).text.splitlines()
    assert json.loads(lines[-1]) == {"status": "success"}


def test_interrupted_blob_resumes_where_it_stopped(server, registry, cdn):
    data = os.urandom(600_000)
    registry.publish("test/dropped:v1", [(MODEL, data)], drop_at=200_000)
    status, events = lines(server.url, {"model": "test/dropped:v1"})
    assert status == 200 and events[-1] == {"status": "success"}
    ranges = [(s.start, s.end, s.sent) for s in cdn.served_for(sha256(data)) if s.end - s.start > 1]
    assert ranges == [(0, len(data), 200_000), (200_000, len(data), len(data) - 200_000)]


def test_corrupted_blob_is_rejected_and_deleted(server, registry):
    data = os.urandom(300_000)
    registry.publish("test/corrupt:v1", [(MODEL, data)], corrupt=True)
    status, events = lines(server.url, {"model": "test/corrupt:v1"})
    assert status == 200
    want = sha256(data)
    assert events[-1]["error"].startswith(
        f"digest mismatch, file must be downloaded again: want sha256:{want}, got sha256:")
    assert "success" not in [e.get("status") for e in events]
    assert blob_files(server.models, want) == []
    assert not (server.models / "manifests/registry.ollama.ai/test/corrupt").exists()


def test_a_download_another_process_keeps_locked_is_a_409_and_loses_nothing(server, registry, tmp_path):
    """Another llamagate (here a process that only holds the lock) downloading the same blob into
    the store: the pull waits 5 s for it, then answers 409, and leaves that download alone."""
    data = os.urandom(200_000)
    registry.publish("test/locked:v1", [(MODEL, data)])
    partial = server.models / "blobs" / f"sha256-{sha256(data)}-partial"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"theirs")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), str(partial)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        started = time.monotonic()
        r = httpx.post(f"{server.url}/api/pull", json={"model": "test/locked:v1", "stream": False}, timeout=30)
        waited = time.monotonic() - started
        assert r.status_code == 409, r.text
        assert r.json() == {"error": f"another process is downloading sha256:{sha256(data)} into this store: "
                                     "pull again when it is done"}
        assert 4.5 < waited < 10
        status, events = lines(server.url, {"model": "test/locked:v1"})
        assert status == 200 and "another process is downloading" in events[-1]["error"]
        assert partial.read_bytes() == b"theirs"
        assert blob_files(server.models, sha256(data)) == [partial.name]
        assert not (server.models / "manifests/registry.ollama.ai/test/locked").exists()
    finally:
        holder.kill()
        holder.wait()
    # Its holder gone (killed: the lock goes with it), the next pull starts the blob over and has it.
    status, events = lines(server.url, {"model": "test/locked:v1"})
    assert status == 200 and events[-1] == {"status": "success"}
    assert blob_files(server.models, sha256(data)) == [f"sha256-{sha256(data)}"]


def test_a_download_ollama_left_resumes_where_it_stopped(server, registry, cdn):
    """The files an interrupted `ollama pull` leaves, byte for byte as its JSON encoder writes
    them (server/download.go: a part per file, one line each; the partial file truncated to the
    blob's size): llamagate fetches only the bytes the parts lack, and the blob verifies."""
    data = os.urandom(600_000)
    hex_digest = sha256(data)
    registry.publish("test/fromollama:v1", [(MODEL, data)])
    blobs = server.models / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    partial = blobs / f"sha256-{hex_digest}-partial"
    # Part 0 done, part 1 a third in, the rest of the file a hole.
    partial.write_bytes(data[:400_000] + bytes(200_000))
    (blobs / f"{partial.name}-0").write_bytes(b'{"N":0,"Offset":0,"Size":300000,"Completed":300000}\n')
    (blobs / f"{partial.name}-1").write_bytes(b'{"N":1,"Offset":300000,"Size":300000,"Completed":100000}\n')
    status, events = lines(server.url, {"model": "test/fromollama:v1"})
    assert status == 200 and events[-1] == {"status": "success"}, events
    progress = [e for e in events if e.get("digest") == f"sha256:{hex_digest}"]
    assert progress[-1]["completed"] == 600_000
    ranges = [(s.start, s.end, s.sent) for s in cdn.served_for(hex_digest) if s.end - s.start > 1]
    assert ranges == [(400_000, 600_000, 200_000)]
    assert blob_files(server.models, hex_digest) == [f"sha256-{hex_digest}"]
    assert (blobs / f"sha256-{hex_digest}").read_bytes() == data


def test_concurrent_pulls_share_one_download(server, registry, cdn):
    data = os.urandom(4 * MB)
    registry.publish("test/shared:v1", [(MODEL, data)], throttle=0.02)
    results: list[list] = [[], []]

    def pull(i: int) -> None:
        results[i] = list(ollama.Client(host=server.url).pull("test/shared:v1", stream=True))

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for events in results:
        assert events[-1].status == "success"
        # Both watched the one download progress.
        assert any(0 < (e.completed or 0) < len(data) for e in events if e.digest == f"sha256:{sha256(data)}")
    ranges = [s for s in cdn.served_for(sha256(data)) if s.end - s.start > 1]
    assert len(ranges) == 1 and cdn.bytes_for(sha256(data)) == len(data) + 1


def test_hugging_face_names(server, hf, tmp_path):
    q8 = write_tiny_model(tmp_path / "q8.gguf", context_length=256).read_bytes()
    q4 = write_tiny_model(tmp_path / "q4.gguf", context_length=128).read_bytes()
    hf.repos[("bartowski", "Tiny-GGUF")] = {"Tiny-Q8_0.gguf": q8, "Tiny-Q4_K_M.gguf": q4}
    client = ollama.Client(host=server.url)
    assert list(client.pull("hf.co/bartowski/Tiny-GGUF:q8_0", stream=True))[-1].status == "success"
    assert client.pull("huggingface.co/bartowski/Tiny-GGUF").status == "success"
    models = server.models / "manifests"
    pulled = json.loads((models / "hf.co/bartowski/Tiny-GGUF/q8_0").read_bytes())
    assert pulled["layers"][0]["digest"] == f"sha256:{sha256(q8)}"
    latest = json.loads((models / "huggingface.co/bartowski/Tiny-GGUF/latest").read_bytes())
    assert latest["layers"][0]["digest"] == f"sha256:{sha256(q4)}"
    names = {m.model for m in client.list().models}
    assert {"hf.co/bartowski/Tiny-GGUF:q8_0", "huggingface.co/bartowski/Tiny-GGUF:latest"} <= names
    answer = client.generate(model="hf.co/bartowski/Tiny-GGUF:q8_0", prompt="hi", options={"num_predict": 4})
    assert answer.done
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("hf.co/bartowski/Tiny-GGUF:IQ1_S")
    assert e.value.status_code == 404
    assert all(h["User-Agent"].startswith("ollama/") for _, _, h in hf.requests)


def test_insecure_registry_names(server, registry, tiny_bytes):
    registry.publish("test/plain:v1", [(MODEL, tiny_bytes)])
    host = registry.url.removeprefix("http://")
    r = httpx.post(f"{server.url}/api/pull", json={"model": f"http://{host}/test/plain:v1"}, timeout=30)
    assert r.status_code == 400 and "insecure protocol http" in r.json()["error"]
    # Without `insecure` the registry is spoken to over TLS, which a plain HTTP server fails.
    seen = len(registry.requests)
    r = httpx.post(f"{server.url}/api/pull", json={"model": f"{host}/test/plain:v1"}, timeout=30)
    assert r.status_code == 502 and len(registry.requests) == seen
    r = httpx.post(f"{server.url}/api/pull", json={"model": f"{host}/test/plain:v1", "insecure": True,
                                                    "stream": False}, timeout=30)
    assert r.json() == {"status": "success"}
    assert (server.models / "manifests" / host / "test/plain/v1").is_file()


def test_disk_full_leaves_nothing_visible(tmp_path, registry, hf):
    data = os.urandom(3 * MB)
    registry.publish("test/toobig:v1", [(MODEL, data)])
    # A file size limit stands in for a full disk: writes past it fail as on a full one.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (MB, hard))
    try:
        srv = Server(tmp_path, env=mirrors(registry, hf))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    try:
        r = httpx.post(f"{srv.url}/api/pull", json={"model": "test/toobig:v1", "stream": False}, timeout=60)
        assert r.status_code == 507
        assert r.json()["error"].startswith(f"not enough disk space to download sha256:{sha256(data)}")
        assert not (srv.models / "manifests").exists()
        assert not (srv.models / "blobs" / f"sha256-{sha256(data)}").exists()
        assert httpx.get(f"{srv.url}/api/tags").json() == {"models": []}
    finally:
        srv.stop()


def test_killed_pull_leaves_no_model_and_resumes_with_the_rest(tmp_path, registry, hf, cdn):
    data = os.urandom(40 * MB)
    hex_digest = sha256(data)
    registry.publish("test/big:v1", [(MODEL, data)], pause_after=10 * MB)
    blob = cdn.blobs[hex_digest]
    first = Server(tmp_path, env=mirrors(registry, hf))
    try:
        cli = subprocess.Popen([*llamagate_cmd(), "pull", "test/big:v1"], env=first.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Killed once the server has written some of what was sent (on a busy machine the sent
        # bytes may still sit in socket buffers): its blocks in the sparse partial file show it.
        partial = first.models / "blobs" / f"sha256-{hex_digest}-partial"
        assert wait_until(lambda: blob.sent >= 10 * MB and partial.stat().st_blocks * 512 >= 2 * MB, timeout=30)
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        # The server stops the download its last client left, keeping every byte it has.
        assert wait_until(lambda: f"stopping the download of sha256:{hex_digest}" in first.log())
        assert wait_until(lambda: sum(p.Completed for p in saved_parts(first.models, hex_digest)) > 0)
        first.stop(signal.SIGKILL)
    finally:
        first.stop()
    assert not (first.models / "manifests").exists()
    assert Store(first.models).stored() == []
    assert f"sha256-{hex_digest}" not in blob_files(first.models, hex_digest)
    parts = saved_parts(first.models, hex_digest)
    have = sum(p.Completed for p in parts)
    assert 0 < have < len(data) and [p.Size for p in parts] == [16 * MB, 16 * MB, 8 * MB]

    blob.pause_after = None
    blob.resume.set()
    served_before = len(cdn.served_for(hex_digest))
    second = Server(tmp_path, env=mirrors(registry, hf))
    try:
        assert ollama.Client(host=second.url).pull("test/big:v1").status == "success"
    finally:
        second.stop()
    resumed = [s for s in cdn.served_for(hex_digest)[served_before:] if s.end - s.start > 1]
    assert sorted((s.start, s.end) for s in resumed) == [
        (p.Offset + p.Completed, p.Offset + p.Size) for p in parts if p.Completed < p.Size]
    assert sum(s.sent for s in resumed) == len(data) - have
    assert blob_files(first.models, hex_digest) == [f"sha256-{hex_digest}"]
    assert hashlib.sha256((first.models / "blobs" / f"sha256-{hex_digest}").read_bytes()).hexdigest() == hex_digest


def saved_parts(models: Path, hex_digest: str) -> list[Part]:
    parts = []
    for path in sorted((models / "blobs").glob(f"sha256-{hex_digest}-partial-*")):
        try:
            parts.append(msgspec.json.decode(path.read_bytes(), type=Part))
        except (OSError, msgspec.DecodeError):
            continue
    return sorted(parts, key=lambda p: p.N)


def test_existing_ollama_store_is_served_in_place(tmp_path, tiny_gguf, llama_server_binary):
    """A user of Ollama: `~/.ollama/models` exists and llamagate's own store does not."""
    home = tmp_path / "home"
    models = home / ".ollama" / "models"
    (models / "blobs").mkdir(parents=True)
    gguf = tiny_gguf.read_bytes()
    config = config_blob()
    for data in (gguf, config):
        (models / "blobs" / f"sha256-{sha256(data)}").write_bytes(data)
    # An interrupted Ollama download lies beside them.
    (models / "blobs" / f"sha256-{'e' * 64}-partial").write_bytes(b"\0" * 10)
    (models / "blobs" / f"sha256-{'e' * 64}-partial-0").write_text('{"N":0,"Offset":0,"Size":10,"Completed":3}\n')
    raw = manifest_bytes((sha256(config), len(config)), [(MODEL, sha256(gguf), len(gguf))])
    manifest_path = models / "manifests/registry.ollama.ai/library/fromollama/latest"
    manifest_path.parent.mkdir(parents=True)
    manifest_path.write_bytes(raw)
    before = {p.name: p.stat().st_ino for p in (models / "blobs").iterdir()}

    dead = f"http://127.0.0.1:{free_port()}"
    srv = Server(tmp_path, env={
        "OLLAMA_MODELS": "", "HOME": str(home), "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "LLAMAGATE_REGISTRY_MIRRORS": f"registry.ollama.ai={dead}",
    })
    try:
        client = ollama.Client(host=srv.url)
        listed = {m.model: m for m in client.list().models}
        assert listed["fromollama:latest"].digest == hashlib.sha256(raw).hexdigest()
        assert client.generate(model="fromollama", prompt="hi", options={"num_predict": 4}).done
        runner_args = [
            (Path("/proc") / pid / "cmdline").read_bytes()
            for pid in os.listdir("/proc") if pid.isdigit() and (Path("/proc") / pid / "cmdline").exists()
        ]
        gguf_path = str(models / "blobs" / f"sha256-{sha256(gguf)}").encode()
        assert any(b"llama-server" in args and gguf_path in args for args in runner_args)
        # Offline: the registry cannot be reached, the local copy is complete.
        out = srv.cli("pull", "fromollama")
        assert "registry unreachable" in out.stderr and "success" in out.stderr
        r = httpx.post(f"{srv.url}/api/pull", json={"model": "notlocal", "stream": False}, timeout=30)
        assert r.status_code == 502 and "registry unreachable" in r.json()["error"]
    finally:
        srv.stop()
    assert {p.name: p.stat().st_ino for p in (models / "blobs").iterdir()} == before
    assert manifest_path.read_bytes() == raw
    assert not (tmp_path / "xdg").exists()
    assert str(models) in srv.log()


def test_cli_pull_progress_and_quiet(server, registry, tiny_bytes):
    data = os.urandom(2 * MB)
    registry.publish("test/cli:v1", [(MODEL, data)], throttle=0.005)
    out = server.cli("pull", "test/cli:v1")
    lines_ = out.stderr.splitlines()
    assert lines_[0] == "pulling manifest"
    assert f"pulling {sha256(data)[:12]}... 100% ▕{'█' * 25}▏ 2.0 MB" in lines_
    assert lines_[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    quiet = server.cli("pull", "test/cli:v1", "--quiet")
    assert quiet.stdout == "" and quiet.stderr == ""
    failed = server.cli("pull", "test/cli:nosuch", "-q", check=False)
    assert failed.returncode == 1 and failed.stderr.strip() == "Error: pull model manifest: file does not exist"


def test_cli_pull_redraws_bars_on_a_terminal(server, registry):
    data = os.urandom(3 * MB)
    registry.publish("test/tty:v1", [(MODEL, data)], throttle=0.01)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*llamagate_cmd(), "pull", "test/tty:v1"], env=server.env,
                            stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        os.close(leader)
    text = out.decode()
    label = f"pulling {sha256(data)[:12]}..."
    # Drawn in place: the cursor goes back up over the previous frame, and the bar grows.
    assert "\x1b[2A" in text and f"{label} 100% ▕{'█' * 25}▏ 3.0 MB" in text
    partial = [line for line in text.split("\r\x1b[2K") if line.startswith(label) and "/s" in line]
    assert partial and "/3.0 MB" in partial[0]
    assert text.rstrip().endswith("success")
