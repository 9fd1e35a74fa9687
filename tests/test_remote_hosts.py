"""Three llamagates on loopback: two back ends serving SmolLM2 from their own stores, and a front
whose `--upstream` names them. The front lists the model with `remote_host`, passes chat, generate,
embed, show and /v1 on in their own dialect, shares the load by requests in flight, routes around a
back end that stopped and probes it back in. Driven with the `ollama` and `openai` clients."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import openai
import pytest
from conftest import Server, wait_until

NAME = "smollm2:135m"


def _back(tmp, store, port: int | None = None) -> Server:
    """A back end on the shared store (the model imported once), as hosts on shared storage run."""
    return Server(tmp, port=port, env={"OLLAMA_MODELS": str(store)})


def served(back: Server, path: str) -> int:
    """How many requests for `path` the back end answered, from its request log."""
    return len(re.findall(rf"POST {re.escape(path)} 200 .* model=smollm2:135m", back.log()))


@pytest.fixture(scope="module")
def store(server):
    """The shared server's store, where SmolLM2 is imported already."""
    return server.models


@pytest.fixture(scope="module")
def backs(tmp_path_factory, store) -> Iterator[list[Server]]:
    servers = [_back(tmp_path_factory.mktemp(f"back{i}"), store) for i in range(2)]
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def front(tmp_path_factory, backs) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("front"), "--upstream", f"{NAME}={','.join(b.url for b in backs)}",
                 env={"OLLAMA_REMOTES": "127.0.0.1"})
    try:
        yield srv
    finally:
        srv.stop()


def test_listed_and_shown_as_remote(front, backs):
    def listed():
        models = httpx.get(f"{front.url}/api/tags").json()["models"]
        return models[0] if models and models[0]["details"].get("parameter_size") else None

    assert wait_until(listed, timeout=10)
    m = listed()
    assert m["name"] == NAME and m["remote_model"] == NAME and m["remote_host"] == backs[0].url
    assert m["details"]["quantization_level"] == "Q4_1" and m["size"] > 50_000_000
    shown = ollama.Client(host=front.url).show(NAME)
    assert "<|im_start|>" in shown.template and shown.modelinfo["general.parameter_count"] > 100_000_000
    assert front.runner_pids() == [] and "starting:" not in front.log()


def test_ollama_client_through_the_front(front, backs):
    client = ollama.Client(host=front.url)
    chunks = list(client.chat(model=NAME, messages=[{"role": "user", "content": "Say hi"}], stream=True,
                              options={"num_predict": 8, "temperature": 0}))
    assert chunks[-1].done and chunks[-1].eval_count == 8 and chunks[-1].model == NAME
    assert "".join(c.message.content for c in chunks).strip()
    raw = httpx.post(f"{front.url}/api/generate", json={"model": NAME, "prompt": "Hi", "stream": False,
                                                         "options": {"num_predict": 4}}, timeout=60).json()
    assert raw["done"] and raw["remote_host"] in (b.url for b in backs) and raw["remote_model"] == NAME
    embedded = client.embed(model=NAME, input=["one", "two"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 576
    # The back end's own refusal comes back as it said it.
    bad = httpx.post(f"{front.url}/api/chat", json={"model": NAME, "messages": "hi"}, timeout=30)
    assert bad.status_code == 400 and "error" in bad.json()


def test_openai_client_through_the_front(front):
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key="unused")
    stream = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Say hi"}],
                                            max_tokens=8, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage.completion_tokens == 8
    answer = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert answer.usage.completion_tokens == 4 and answer.choices[0].message.content
    vectors = client.embeddings.create(model=NAME, input="hello")
    assert len(vectors.data[0].embedding) == 576
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="absent", messages=[{"role": "user", "content": "Hi"}])


def test_created_with_remote_host(front, backs):
    client = ollama.Client(host=front.url)
    # Ollama's allowlist: a host OLLAMA_REMOTES doesn't name is refused, and nothing is written.
    refused = httpx.post(f"{front.url}/api/create", json={"model": "elsewhere", "from": NAME,
                                                          "remote_host": "10.9.9.9"}, timeout=30)
    assert refused.status_code == 400 and "10.9.9.9 is not in OLLAMA_REMOTES" in refused.json()["error"]
    httpx.post(f"{front.url}/api/create", json={"model": "far", "from": NAME, "remote_host": backs[1].url},
               timeout=30).raise_for_status()
    listed = {m["name"]: m for m in httpx.get(f"{front.url}/api/tags").json()["models"]}
    assert "elsewhere:latest" not in listed
    assert listed["far:latest"]["remote_host"] == backs[1].url and listed["far:latest"]["remote_model"] == NAME
    before = served(backs[1], "/api/chat")
    r = httpx.post(f"{front.url}/api/chat", json={"model": "far", "messages": [{"role": "user", "content": "Hi"}],
                                                  "stream": False, "options": {"num_predict": 2}}, timeout=60).json()
    assert r["done"] and r["model"] == "far" and r["remote_model"] == NAME
    assert wait_until(lambda: served(backs[1], "/api/chat") == before + 1, timeout=5)
    # Derived from (FROM far) and deleted like any stored model; the derived one still names the server.
    httpx.post(f"{front.url}/api/create", json={"model": "nearer", "from": "far", "system": "Be brief."},
               timeout=30).raise_for_status()
    assert client.delete("far").status == "success"
    listed = {m["name"]: m for m in httpx.get(f"{front.url}/api/tags").json()["models"]}
    assert "far:latest" not in listed and listed["nearer:latest"]["remote_host"] == backs[1].url
    assert client.delete("nearer").status == "success"


def test_requests_share_the_load(front, backs):
    before = [served(b, "/api/generate") for b in backs]
    client = ollama.Client(host=front.url)

    def ask(_):
        return client.generate(model=NAME, prompt="Write a story.", options={"num_predict": 24})

    with ThreadPoolExecutor(2) as pool:
        assert all(a.done for a in pool.map(ask, range(2)))
    # Two at once: one each, by requests in flight; then one after another, alternating.
    assert wait_until(lambda: [served(b, "/api/generate") - n for b, n in zip(backs, before)] == [1, 1], timeout=5)
    for _ in range(2):
        assert client.generate(model=NAME, prompt="Hi", options={"num_predict": 2}).done
    assert wait_until(lambda: [served(b, "/api/generate") - n for b, n in zip(backs, before)] == [2, 2], timeout=5)


def test_a_stopped_back_end_is_routed_around_and_probed_back(front, backs, store, tmp_path):
    client = ollama.Client(host=front.url)
    dead = backs[0]
    dead.stop(signal.SIGKILL)  # a host that went away (its runner follows it: parent-death signal)
    for _ in range(3):
        r = client.chat(model=NAME, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 2})
        assert r.done and r.message.content
    assert f"upstream {dead.url} out of rotation" in front.log()
    backs[0] = revived = _back(tmp_path, store, port=dead.port)
    assert wait_until(lambda: f"upstream {dead.url} back in rotation" in front.log(), timeout=10)
    for _ in range(2):
        assert client.generate(model=NAME, prompt="Hi", options={"num_predict": 2}).done
    assert served(revived, "/api/generate") >= 1


def test_every_back_end_down_is_a_503_naming_them(front, backs):
    for back in backs:
        back.stop(signal.SIGKILL)
    started = time.monotonic()
    r = httpx.post(f"{front.url}/api/chat", json={"model": NAME, "messages": [{"role": "user", "content": "x"}]},
                   timeout=30)
    # Each refused the connection in turn; none is left, and the answer says who and why.
    assert r.status_code == 503 and all(b.url in r.json()["error"] for b in backs), r.text
    assert "Ollama-API server" in r.json()["error"] and time.monotonic() - started < 5
    v1 = httpx.post(f"{front.url}/v1/chat/completions", json={"model": NAME, "messages": []}, timeout=30)
    assert v1.status_code == 503 and backs[0].url in v1.json()["error"]["message"]
