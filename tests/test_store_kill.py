"""llamagate SIGKILLed during a pull, a create, a blob upload and a delete leaves a store whose
every manifest's blobs exist and verify, and the leftovers are pruned at a later start as Ollama
prunes them (unless OLLAMA_NOPRUNE); a delete racing a create that shares its blob loses nothing."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator

import httpx

from conftest import Server, wait_until
from registries import sha256
from supervisor.models.store import MODEL
from test_store_consistency import _env, age, delete, leftovers, pull, unnamed_blobs, upload, verified

MB = 1_000_000


def _killed_under(request: Callable[[], object]) -> None:
    """Starts `request` in a thread whose server is about to be killed: its dropped
    connection is the point, not an error."""
    def run() -> None:
        try:
            request()
        except httpx.TransportError:
            pass

    threading.Thread(target=run, daemon=True).start()


def test_a_delete_during_a_create_that_shares_a_blob_loses_nothing(tmp_path, padded_gguf, llama_server_binary):
    """`copy` is created from the GGUF blob `orig` uses, and reading its header takes a while;
    `orig` is deleted meanwhile. The delete waits for the store lock instead of pruning the blob
    under the create."""
    srv = Server(tmp_path)
    try:
        digest = upload(srv.url, padded_gguf.read_bytes())
        files = {"model.gguf": digest}
        r = httpx.post(f"{srv.url}/api/create", json={"model": "orig", "files": files, "stream": False}, timeout=60)
        assert r.status_code == 200, r.text
        result: list[httpx.Response] = []
        body = {"model": "copy", "files": files, "stream": False}
        creator = threading.Thread(target=lambda: result.append(
            httpx.post(f"{srv.url}/api/create", json=body, timeout=60)))
        creator.start()
        time.sleep(0.15)  # the create is reading the GGUF's header (0.4 s or more)
        assert delete(srv.url, "orig").status_code == 200
        creator.join(60)
        assert result[0].status_code == 200 and result[0].json()["status"] == "success", result[0].text
        assert verified(srv.models) == ["registry.ollama.ai/library/copy/latest"]
        show = httpx.post(f"{srv.url}/api/show", json={"model": "copy"}, timeout=30)
        assert show.status_code == 200, show.text
    finally:
        srv.stop()


class _SlowBody:
    """An upload's body that stops after `first` bytes until told to go on."""

    def __init__(self, data: bytes, first: int) -> None:
        self.data, self.first = data, first
        self.sent = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        for offset in range(0, self.first, 65536):
            yield self.data[offset:min(offset + 65536, self.first)]
        self.sent.set()
        time.sleep(60)
        yield self.data[self.first:]


def test_sigkill_during_a_pull_a_create_an_upload_and_a_delete(tmp_path, registry, cdn, padded_gguf):
    """Each killed at its worst moment, then a restart: every manifest verifies; an hour later
    (the files aged), a restart prunes every leftover, and with OLLAMA_NOPRUNE it keeps them."""
    big = os.urandom(8 * MB)
    registry.publish("library/killed:latest", [(MODEL, big)], pause_after=2 * MB)
    env = _env(registry)

    srv = Server(tmp_path, env=env)
    gguf = upload(srv.url, padded_gguf.read_bytes())
    r = httpx.post(f"{srv.url}/api/create", json={"model": "base", "files": {"m.gguf": gguf}, "stream": False},
                   timeout=60)
    assert r.status_code == 200, r.text
    # A pull, killed with 2 MB of 8 in its partial file.
    _killed_under(lambda: pull(srv.url, "killed"))
    assert wait_until(lambda: cdn.blobs[sha256(big)].sent >= 2 * MB, timeout=20)
    time.sleep(0.3)
    srv.stop(9)

    srv = Server(tmp_path, env=env)
    # An upload, killed half-way: its temporary file stays behind.
    body = _SlowBody(os.urandom(4 * MB), 2 * MB)
    digest = "sha256:" + hashlib.sha256(body.data).hexdigest()
    _killed_under(lambda: httpx.post(f"{srv.url}/api/blobs/{digest}", content=body, timeout=120))
    assert body.sent.wait(20)
    assert wait_until(lambda: any(p.name.startswith(".upload-") for p in (srv.models / "blobs").iterdir()))
    time.sleep(0.3)
    srv.stop(9)

    srv = Server(tmp_path, env=env)
    # A create, killed while it reads the GGUF's header.
    _killed_under(lambda: httpx.post(f"{srv.url}/api/create", json={
        "model": "halfmade", "files": {"m.gguf": gguf}, "system": "new text", "stream": False}, timeout=60))
    time.sleep(0.25)
    srv.stop(9)

    srv = Server(tmp_path, env=env)
    # A delete, killed between removing the manifest and pruning its blobs: the state is made
    # by hand, since the window is too short to hit (the manifest goes first, then the blobs).
    srv.create("victim", padded_gguf, "SYSTEM only the victim has this")
    srv.stop(9)
    (srv.models / "manifests" / "registry.ollama.ai" / "library" / "victim" / "latest").unlink()

    # The restart right after: every manifest verifies, nothing that may be resumed or
    # finished by another process is touched (it is younger than the hour's grace).
    srv = Server(tmp_path, env=env)
    try:
        assert verified(srv.models) == ["registry.ollama.ai/library/base/latest"] or \
            sorted(verified(srv.models)) == ["registry.ollama.ai/library/base/latest",
                                             "registry.ollama.ai/library/halfmade/latest"]
        assert any(name.endswith("-partial") for name in leftovers(srv.models))
        assert any(name.startswith(".upload-") for name in leftovers(srv.models))
        assert unnamed_blobs(srv.models)  # the victim's own layers
    finally:
        srv.stop(9)

    # An hour later, with OLLAMA_NOPRUNE: still all there.
    age(srv.models)
    before = sorted(p.name for p in (srv.models / "blobs").iterdir())
    srv = Server(tmp_path, env={**env, "OLLAMA_NOPRUNE": "1"})
    srv.stop(9)
    assert sorted(p.name for p in (srv.models / "blobs").iterdir()) == before

    # Without it: the leftovers and the blobs no manifest names are pruned, the rest verifies.
    srv = Server(tmp_path, env=env)
    try:
        assert leftovers(srv.models) == []
        assert unnamed_blobs(srv.models) == []
        assert "registry.ollama.ai/library/base/latest" in verified(srv.models)
        assert "pruned" in srv.log()
        cdn.blobs[sha256(big)].pause_after = None
        cdn.blobs[sha256(big)].resume.set()
        assert pull(srv.url, "killed").json()["status"] == "success"
        assert "registry.ollama.ai/library/killed/latest" in verified(srv.models)
    finally:
        srv.stop()


