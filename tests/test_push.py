"""Pushing models to the loopback registry of the pull tests, extended to take uploads and to hand
out tokens to requests signed with ~/.ollama/id_ed25519: push, then pull into an empty store and
chat; chunked and one-request uploads, mounts, an unauthorized push, plain HTTP registries, and
private models pulled with the same credentials."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import ollama
import pytest
from conftest import Server
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from registries import (
    EMPTY_BODY_HASH,
    MODEL,
    OllamaRegistry,
    check_layer_progress,
    config_blob,
    manifest_bytes,
    sha256,
)

from supervisor.errors import LlamagateError
from supervisor.pull import credentials

MB = 1_000_000
DENIED_CLI = "Error: you are not authorized to push to this namespace, create the model under a namespace you own"


def write_key(home: Path) -> tuple[Ed25519PrivateKey, str]:
    """An Ollama key pair in `home/.ollama`, as `ollama serve` writes it; and its public half as
    the registry knows it (base64 of the OpenSSH wire form)."""
    key = Ed25519PrivateKey.generate()
    (home / ".ollama").mkdir(parents=True)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    (home / ".ollama" / "id_ed25519").write_bytes(private)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return key, public.split()[1].decode()


@pytest.fixture(scope="module")
def home(tmp_path_factory, registry) -> Path:
    path = tmp_path_factory.mktemp("home")
    _, public = write_key(path)
    registry.authorize(public, "me")
    return path


def seed(models: Path, name: str, gguf: Path) -> None:
    """A model in a store as `create` would leave it (a GGUF and a config blob), written directly:
    a third of the time of `llamagate create` with SmolLM2."""
    data, config = gguf.read_bytes(), config_blob()
    (models / "blobs").mkdir(parents=True, exist_ok=True)
    for blob in (data, config):
        (models / "blobs" / f"sha256-{sha256(blob)}").write_bytes(blob)
    repository, _, tag = name.rpartition(":")
    path = models / "manifests" / repository / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(manifest_bytes((sha256(config), len(config)), [(MODEL, sha256(data), len(data))]))


@pytest.fixture(scope="module")
def plain(cdn):
    """A registry of one's own at host:port, over plain HTTP, whose token requests need no
    signature, and whose `scratch` namespace anyone with a token may push to."""
    server = OllamaRegistry(cdn)
    server.signed = False
    server.open_namespaces.add("scratch")
    yield server
    server.close()


@pytest.fixture(scope="module")
def pusher(tmp_path_factory, registry, plain, home, smollm2, tiny_gguf, llama_server_binary):
    """A server whose store has `me/smollm2:135m`, pushing to the registry as the user `me`, and
    a tiny model named for the plain registry."""
    tmp = tmp_path_factory.mktemp("pusher")
    seed(tmp / "models", "registry.ollama.ai/me/smollm2:135m", smollm2)
    seed(tmp / "models", f"{plain.url.removeprefix('http://')}/scratch/tiny:v1", tiny_gguf)
    srv = Server(tmp, env={"HOME": str(home), "LLAMAGATE_REGISTRY_MIRRORS": f"registry.ollama.ai={registry.url}"})
    yield srv
    srv.stop()


def push_lines(url: str, body: dict) -> tuple[int, list[dict]]:
    with httpx.stream("POST", f"{url}/api/push", json=body, timeout=120) as r:
        return r.status_code, [json.loads(line) for line in r.iter_lines() if line]


# Pure parts ------------------------------------------------------------------------------------


def test_challenge_and_token_url():
    header = 'Bearer realm="https://ollama.com/token",service="ollama.com",scope="repository:me/m:pull,push"'
    challenge = credentials.parse_challenge(header)
    assert challenge == credentials.Challenge("https://ollama.com/token", "ollama.com", "repository:me/m:pull,push")
    assert credentials.parse_challenge('Basic realm="x"') is None
    url = credentials.token_url(challenge, now=1700000000)
    query = parse_qsl(urlsplit(url).query)
    # Go's url.Values.Encode sorts the keys: the signed URL is the URL sent.
    assert [k for k, _ in query] == ["nonce", "scope", "service", "ts"]
    assert dict(query)["scope"] == "repository:me/m:pull,push" and dict(query)["ts"] == "1700000000"
    assert len(base64.urlsafe_b64decode(dict(query)["nonce"] + "==")) == 16
    assert credentials.token_url(challenge) != credentials.token_url(challenge)  # a fresh nonce each time
    # A realm's own query joins the others, all sorted as Go sorts them.
    keys = [k for k, _ in parse_qsl(urlsplit(credentials.token_url(
        credentials.Challenge("https://h/token?z=1&account=me", "s", "a b"))).query)]
    assert keys == ["account", "nonce", "scope", "scope", "service", "ts", "z"]


def test_only_ollamas_registry_gets_signed_requests():
    assert credentials.signs_for("registry.ollama.ai") and credentials.signs_for("ollama.com")
    assert credentials.signs_for("REGISTRY.OLLAMA.AI") and credentials.signs_for("registry.ollama.com:443")
    assert not credentials.signs_for("hf.co") and not credentials.signs_for("evilollama.ai")
    assert not credentials.signs_for("127.0.0.1:5000")


def test_signature_is_ollamas(tmp_path):
    key, public = write_key(tmp_path)
    data = f"GET,https://ollama.com/token?nonce=x,{EMPTY_BODY_HASH}".encode()
    signed = credentials.sign(tmp_path / ".ollama" / "id_ed25519", data)
    sent_public, _, signature = signed.partition(":")
    assert sent_public == public
    key.public_key().verify(base64.b64decode(signature), data)  # raises if it is not
    with pytest.raises(LlamagateError) as e:
        credentials.sign(tmp_path / "nokey", data)
    assert e.value.status == 403 and "ssh-keygen -t ed25519" in e.value.message


@pytest.mark.parametrize(("asked", "realm", "refusal"), [
    ("https://registry.ollama.ai/v2/me/m/blobs/uploads/", "https://evil.example/token", "another host"),
    ("https://127.0.0.1:5000/v2/me/m/blobs/uploads/", "http://127.0.0.1:5000/token", "plain HTTP"),
])
def test_a_token_is_fetched_only_from_the_registry_itself(asked, realm, refusal, tmp_path, monkeypatch):
    """A challenge may not send the (signed) token request to another host, nor from HTTPS down to
    plain HTTP; registry.ollama.ai's tokens come from ollama.com, as Ollama allows."""
    response = httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="s",scope="x"'},
                              request=httpx.Request("POST", asked))
    creds = credentials.Credentials(httpx.AsyncClient(), "registry.ollama.ai", insecure=True)
    with pytest.raises(LlamagateError) as e:
        asyncio.run(creds.answer(response))
    assert e.value.status == 502 and refusal in e.value.message and creds.token == ""
    trusted = httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://ollama.com/token"'},
                             request=httpx.Request("HEAD", "https://registry.ollama.ai/v2/me/m/blobs/x"))
    seen = []

    def token_server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"token": "t0k"})

    creds = credentials.Credentials(httpx.AsyncClient(transport=httpx.MockTransport(token_server)),
                                    "registry.ollama.ai", insecure=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(LlamagateError) as e:  # no key in this HOME: the signed request can't be made
        asyncio.run(creds.answer(trusted))
    # Not "unauthorized": `llamagate push` shows this one as it is, not as Ollama's namespace message.
    assert "ssh-keygen" in e.value.message and "unauthorized" not in e.value.message and seen == []
    write_key(tmp_path)
    asyncio.run(creds.answer(trusted))
    assert creds.token == "t0k" and creds.headers == {"Authorization": "Bearer t0k"}
    assert seen[0].url.host == "ollama.com" and ":" in seen[0].headers["Authorization"]


# Through the server ----------------------------------------------------------------------------


def test_push_then_pull_into_an_empty_store_and_chat(pusher, registry, cdn, home, tmp_path, smollm2):
    registry.private.add("me")  # the pull below needs the signed token too
    client = ollama.Client(host=pusher.url)
    local = (pusher.models / "manifests/registry.ollama.ai/me/smollm2/135m").read_bytes()
    assert json.loads(local)["layers"][0]["size"] == smollm2.stat().st_size > 64 * MB  # in parts, then

    registry.drop_patch_at = 60 * MB  # the first part's connection drops after 60 MB
    mirror = {"LLAMAGATE_REGISTRY_MIRRORS": f"registry.ollama.ai={registry.url}"}
    with ThreadPoolExecutor(1) as starting:  # the second server starts while the push goes
        second = starting.submit(Server, tmp_path, env={"HOME": str(home), **mirror})
        try:
            events = list(client.push("me/smollm2:135m", stream=True))
        finally:
            puller = second.result()
    try:
        check_pushed(registry, events, local)
        # The second server, its store empty, pulls the private model, and it answers.
        other = ollama.Client(host=puller.url)
        assert other.pull("me/smollm2:135m").status == "success"
        listed = {m.model: m for m in other.list().models}
        assert listed["me/smollm2:135m"].digest == hashlib.sha256(local).hexdigest()
        answer = other.chat(model="me/smollm2:135m", messages=[{"role": "user", "content": "Say hi"}],
                            options={"num_predict": 8})
        assert answer.message.content.strip()
    finally:
        puller.stop()
    # The token went to the registry, never on to the CDN its blob requests redirect to.
    assert all("Authorization" not in h for _, _, h in cdn.requests)
    manifest_gets = [h for m, p, h in registry.requests if m == "GET" and p.endswith("/manifests/135m")]
    assert manifest_gets[-1]["Authorization"].startswith("Bearer ")


def check_pushed(registry: OllamaRegistry, events: list, local: bytes) -> None:
    """The first push of me/smollm2:135m: Ollama's progress lines, the parts, the tokens."""
    manifest = json.loads(local)
    digests = [la["digest"] for la in manifest["layers"]] + [manifest["config"]["digest"]]
    gguf = manifest["layers"][0]

    statuses = [e.status for e in events]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    check_layer_progress(events, digests, "pushing", falls=1)
    assert len({e.completed for e in events if e.digest == gguf["digest"]}) >= 3  # it moved while it went

    assert registry.manifests[("me", "smollm2", "135m")] == local  # byte for byte: the digest stays
    requests = [(m, urlsplit(p).path) for m, p, _ in registry.requests]
    gguf_uploads = [h for m, p, h in registry.requests if m == "PATCH"]
    # The GGUF in 64 MB parts and an empty closing PUT, the dropped part sent again from where the
    # registry's upload status said it stopped; each small blob in one PUT.
    assert [h["Content-Range"] for h in gguf_uploads] == [f"0-{64 * MB - 1}", f"{60 * MB}-{gguf['size'] - 1}"]
    assert [m for m, p in requests if "/blobs/uploads/" in p].count("GET") == 1
    puts = [(p, h["Content-Length"]) for m, p, h in registry.requests if m == "PUT" and "/blobs/uploads/" in p]
    assert sorted(length for _, length in puts) == sorted(
        ["0", *(str(la["size"]) for la in [*manifest["layers"][1:], manifest["config"]])])
    assert requests.count(("PUT", "/v2/me/smollm2/manifests/135m")) == 1
    # Tokens came from signed requests, whose URLs the registry checked against the signatures: one
    # to pull (the first HEAD, of a private model), then one to push (the first upload).
    scopes = [dict(parse_qsl(urlsplit(p).query))["scope"] for p, _ in registry.token_requests]
    assert scopes == ["repository:me/smollm2:pull", "repository:me/smollm2:pull,push"]
    assert all(":" in h["Authorization"] for _, h in registry.token_requests)


def test_a_second_push_sends_nothing_and_a_copy_is_mounted(pusher, registry):
    client = ollama.Client(host=pusher.url)
    before = len(registry.requests)
    assert client.push("me/smollm2:135m").status == "success"
    methods = [m for m, _, _ in registry.requests[before:]]
    assert "PATCH" not in methods and "POST" not in methods  # every blob was there: HEADs only

    client.copy("me/smollm2:135m", "me/copy:v1")
    before = len(registry.requests)
    events = list(client.push("me/copy:v1", stream=True))
    assert events[-1].status == "success"
    posts = [urlsplit(p) for m, p, _ in registry.requests[before:] if m == "POST"]
    assert posts and all(dict(parse_qsl(p.query))["from"] == "me/smollm2" for p in posts)
    assert not [m for m, p, _ in registry.requests[before:] if m in ("PATCH", "PUT") and "/blobs/" in p]
    assert registry.manifests[("me", "copy", "v1")] == registry.manifests[("me", "smollm2", "135m")]


def test_unauthorized_push(pusher, registry):
    client = ollama.Client(host=pusher.url)
    client.copy("me/smollm2:135m", "someoneelse/smollm2:135m")
    with pytest.raises(ollama.ResponseError) as e:
        list(client.push("someoneelse/smollm2:135m", stream=True))
    assert e.value.error == "unauthorized: access denied"
    r = httpx.post(f"{pusher.url}/api/push", json={"model": "someoneelse/smollm2:135m", "stream": False}, timeout=60)
    assert r.status_code == 403 and r.json() == {"error": "unauthorized: access denied"}
    out = pusher.cli("push", "someoneelse/smollm2:135m", check=False)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == DENIED_CLI
    assert ("someoneelse", "smollm2", "135m") not in registry.manifests
    assert not registry.repo_blobs.get(("someoneelse", "smollm2"))


def test_bad_requests(pusher):
    for body, status, error in [
        ({"model": "me/nosuch:v1"}, 404, "model 'me/nosuch:v1' not found"),
        ({"model": "bad name!"}, 400, "invalid model name"),
        ({"model": "http://127.0.0.1:9/me/smollm2:135m"}, 400, "insecure protocol http"),
    ]:
        r = httpx.post(f"{pusher.url}/api/push", json=body, timeout=30)
        assert r.status_code == status and error in r.json()["error"]


def test_plain_http_registry_and_the_cli(pusher, plain, tiny_gguf):
    """Unsigned token requests to a registry that is not Ollama's (the key is for Ollama's
    registry alone), plain HTTP only with --insecure, and `llamagate push`'s progress lines."""
    name = f"{plain.url.removeprefix('http://')}/scratch/tiny:v1"
    over_tls = pusher.cli("push", name, check=False)
    assert over_tls.returncode == 1 and plain.requests == []  # TLS to a plain server: not one request
    out = pusher.cli("push", name, "--insecure", check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == "retrieving manifest" and lines[-2:] == ["pushing manifest", "success"]
    label = f"pushing {sha256(tiny_gguf.read_bytes())[:12]}..."
    assert f"{label} 100% ▕{'█' * 25}▏ 484 KB" in lines
    assert out.stdout == f"\nYou can find your model at:\n\n\t{name}\n"
    assert ("scratch", "tiny", "v1") in plain.manifests
    assert plain.token_requests and all("Authorization" not in h for _, h in plain.token_requests)
