"""Upstream mode: llama-servers started by hand behind one model name, listed from their /props,
sharing the load by requests in flight, a killed one routed around and probed back in."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest
from conftest import Server, free_port, llamagate_cmd, wait_until


class LlamaServer:
    """A llama-server run by the test itself, as a user would run one."""

    def __init__(self, binary: Path, model: Path, port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(model), "--port", str(port), "-t", "1", "-c", "2048", "--metrics", "--no-webui"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=binary.parent,
        )
        assert wait_until(self._healthy, timeout=60), log.read_text()

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def tokens_predicted(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return float(re.search(r"^llamacpp:tokens_predicted_total (\S+)", text, re.M).group(1))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory, smollm2, llama_server_binary) -> Iterator[list[LlamaServer]]:
    folder = tmp_path_factory.mktemp("upstreams")
    servers = [LlamaServer(llama_server_binary, smollm2, free_port(), folder / f"u{i}.log") for i in range(2)]
    try:
        yield servers
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.kill()


@pytest.fixture(scope="module")
def gate(tmp_path_factory, upstreams) -> Iterator[Server]:
    urls = ",".join(u.url for u in upstreams)
    srv = Server(tmp_path_factory.mktemp("gate"), "--upstream", f"smol={urls}")
    try:
        yield srv
    finally:
        srv.stop()


def test_listed_with_metadata_from_props(gate, smollm2):
    def listed():
        models = httpx.get(f"{gate.url}/api/tags").json()["models"]
        return models[0] if models and models[0]["details"].get("parameter_size") else None

    assert wait_until(listed, timeout=10)
    m = listed()
    assert m["name"] == m["model"] == "smol:latest"
    assert m["details"]["format"] == "gguf"
    assert m["details"]["parameter_size"] == "134.52M"
    assert m["details"]["quantization_level"] == "Q4_1"
    assert 50_000_000 < m["size"] < smollm2.stat().st_size * 2 and len(m["digest"]) == 64
    # Nothing was spawned for it.
    assert gate.runner_pids() == [] and "starting:" not in gate.log()
    shown = ollama.Client(host=gate.url).show("smol")
    assert shown.capabilities == ["completion"] and "<|im_start|>" in shown.template
    assert shown.details.quantization_level == "Q4_1" and shown.modelinfo["general.parameter_count"] > 100_000_000


def test_store_operations_on_an_upstream_model_are_400(gate):
    for method, path, body in [
        ("POST", "/api/copy", {"source": "smol", "destination": "smol2"}),
        ("DELETE", "/api/delete", {"model": "smol"}),
        ("POST", "/api/create", {"model": "smol3", "from": "smol"}),
    ]:
        r = httpx.request(method, f"{gate.url}{path}", json=body)
        assert r.status_code == 400 and "served by an existing llama-server" in r.json()["error"], (path, r.text)


def test_requests_share_the_load(gate, upstreams):
    before = [u.tokens_predicted() for u in upstreams]
    client = ollama.Client(host=gate.url)

    def ask(_):
        return client.generate(model="smol", prompt="Write a story.", options={"num_predict": 30})

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(ask, range(2)))
    assert all(a.done and a.eval_count == 30 for a in answers)
    after = [u.tokens_predicted() for u in upstreams]
    # Two at once: one each, by requests in flight.
    assert [a - b for a, b in zip(after, before)] == [30, 30]
    # One after another: they alternate too.
    for _ in range(2):
        assert client.generate(model="smol", prompt="Hi", options={"num_predict": 4}).done
    assert [u.tokens_predicted() for u in upstreams] == [a + 4 for a in after]


def test_a_killed_upstream_is_routed_around_and_probed_back(gate, upstreams, smollm2, llama_server_binary, tmp_path):
    client = ollama.Client(host=gate.url)
    dead = upstreams[0]
    dead.kill()
    for _ in range(4):
        r = client.chat(model="smol", messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4})
        assert r.done and r.message.content
    assert f"upstream {dead.url} out of rotation" in gate.log()
    # Back on the same port: the probe puts it back in rotation.
    upstreams[0] = revived = LlamaServer(llama_server_binary, smollm2, dead.port, tmp_path / "revived.log")
    assert wait_until(lambda: f"upstream {dead.url} back in rotation" in gate.log(), timeout=10)
    for _ in range(2):
        assert client.generate(model="smol", prompt="Hi", options={"num_predict": 4}).done
    assert revived.tokens_predicted() >= 4


def test_all_upstreams_down_is_a_503(tmp_path):
    port = free_port()
    srv = Server(tmp_path, "--upstream", f"gone=http://127.0.0.1:{port}")
    try:
        r = httpx.post(f"{srv.url}/api/generate", json={"model": "gone", "prompt": "hi"}, timeout=30)
        assert r.status_code in (502, 503)
        assert f"http://127.0.0.1:{port}" in r.json()["error"]
        time.sleep(0.5)
        r = httpx.post(f"{srv.url}/api/generate", json={"model": "gone", "prompt": "hi"}, timeout=30)
        assert r.status_code == 503 and "no upstream llama-server for gone:latest is reachable" in r.json()["error"]
    finally:
        srv.stop()


def test_offline_pull_of_an_upstream_name_reports_the_registry(tmp_path):
    """Pull reads the store alone: an upstream name with no local copy is an ordinary offline
    pull (502 naming the registry), as it is for any other name."""
    dead = f"http://127.0.0.1:{free_port()}"
    srv = Server(tmp_path, "--upstream", f"gone=http://127.0.0.1:{free_port()}",
                 env={"LLAMAGATE_REGISTRY_MIRRORS": f"registry.ollama.ai={dead}"})
    try:
        r = httpx.post(f"{srv.url}/api/pull", json={"model": "gone", "stream": False}, timeout=30)
        assert r.status_code == 502 and "registry unreachable" in r.json()["error"], r.text
    finally:
        srv.stop()


def test_bad_upstream_flag_is_refused():
    r = subprocess.run([*llamagate_cmd(), "serve", "--upstream", "no-url"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "--upstream 'no-url': expected NAME=VALUE" in r.stderr
