"""The security review as tests, on a real `llamagate serve` and real llama-servers, started with
umask 0 in a folder whose name is a shell command: no shell where runners are spawned (their
arguments reach them verbatim), files never writable by other users, runner keys random per
runner, in their environment only, never on a command line or in the log."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, wait_until

PWNED = "pwned-by-a-shell"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_gguf, llama_server_binary) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("security") / f"store $(touch {PWNED}) ; touch {PWNED} `touch {PWNED}`"
    root.mkdir()
    old = os.umask(0)
    try:
        srv = Server(root)
    finally:
        os.umask(old)
    try:
        srv.create("tiny", tiny_gguf)
        yield srv
    finally:
        srv.stop()


def _generate(srv: Server, **extra) -> httpx.Response:
    return httpx.post(f"{srv.url}/api/generate", timeout=60, json={
        "model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 1}, **extra})


def _environ(pid: int) -> dict[bytes, bytes]:
    return dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)


def test_runner_arguments_never_pass_through_a_shell(hostile, llama_server_binary) -> None:
    assert _generate(hostile).status_code == 200
    (pid,) = hostile.runner_pids()
    model = Path(os.fsdecode(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[2]))
    assert model.is_relative_to(hostile.models) and "$(touch" in str(model)  # one argument, verbatim
    # Where a shell would have run `touch`: the runner's folder (the binary's), ours, the store's.
    for folder in (llama_server_binary.parent, Path.cwd(), hostile.models.parent.parent):
        assert not list(folder.rglob(f"{PWNED}*")), folder


def test_nothing_the_server_makes_is_writable_by_others(hostile) -> None:
    """Started with umask 0: the store's folders, manifests and blobs, and the runtime cache."""
    assert _generate(hostile).status_code == 200
    r = httpx.post(f"{hostile.url}/api/copy", json={"source": "tiny", "destination": "copied"})
    assert r.status_code == 200
    made = [p for p in hostile.models.parent.rglob("*") if p.name not in ("serve.log", "tiny.Modelfile")]
    assert len(made) > 8
    loose = [f"{p} {stat.filemode(p.stat().st_mode)}" for p in made if p.stat().st_mode & 0o022]
    assert not loose, loose


def test_runner_keys_are_random_per_runner_and_kept_out_of_command_lines_and_logs(hostile) -> None:
    keys = set()
    for _ in range(2):  # each start of a runner, chat and embedding alike, gets a key of its own
        assert _generate(hostile).status_code == 200
        r = httpx.post(f"{hostile.url}/api/embed", json={"model": "tiny", "input": "hi"}, timeout=60)
        assert r.status_code == 200
        pids = hostile.runner_pids()
        assert len(pids) == 2
        for pid in pids:
            key = _environ(pid)[b"LLAMA_API_KEY"]
            assert len(key) >= 32 and key not in Path(f"/proc/{pid}/cmdline").read_bytes()
            keys.add(key)
        assert _generate(hostile, keep_alive=0).status_code == 200
        assert httpx.post(f"{hostile.url}/api/embed", timeout=60, json={
            "model": "tiny", "input": "hi", "keep_alive": 0}).status_code == 200
        assert wait_until(lambda: hostile.runner_pids() == [], timeout=10)
    assert len(keys) == 4
    log = hostile.log().encode()
    assert not [k for k in keys if k in log]
