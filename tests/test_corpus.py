"""A corpus of nasty inputs on every route of a real `llamagate serve` (in front of
tests/fake_llama_server.py): truncated and invalid JSON, the wrong type in every field, huge,
negative and non-finite numbers, deep nesting, 10 MB strings, invalid UTF-8, unknown fields, empty
bodies, wrong content types, hostile model names and digests.

A bad input is a 4xx in its dialect's shape. Odd but valid inputs (unknown fields, which Ollama
ignores; a JSON body sent as text/plain; numbers Ollama takes) are served. Either way: no 5xx, no
traceback in the log, no connection left hanging, nothing outside the store read or written (the
test compares the file system around the store before and after), and the next request served."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from conftest import Server

from proxy.ollama import schemas as ollama
from proxy.openai import schemas as openai
from proxy.semantics import Options

SECRET = "TOP-SECRET-OUTSIDE-THE-STORE"
TEN_MB = "x" * (10 * 1024 * 1024)
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def srv(fake_server, tiny_gguf) -> Server:
    """The shared fake server, with a secret and a GGUF beside its store for hostile names to reach for."""
    tmp = fake_server.models.parent
    (tmp / "secret").mkdir(exist_ok=True)
    (tmp / "secret" / "secret.txt").write_text(SECRET)
    (tmp / "outside.gguf").write_bytes(tiny_gguf.read_bytes())
    return fake_server


# Each JSON route: method, path, a valid body, the Struct it is decoded into.
JSON_ROUTES: list[tuple[str, str, dict[str, Any], type]] = [
    ("POST", "/api/chat", {"model": "tiny", "messages": HI, "stream": False}, ollama.ChatRequest),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}, ollama.GenerateRequest),
    ("POST", "/api/embed", {"model": "tiny", "input": "hi"}, ollama.EmbedRequest),
    ("POST", "/api/embeddings", {"model": "tiny", "prompt": "hi"}, ollama.EmbeddingsRequest),
    ("POST", "/api/show", {"model": "tiny"}, ollama.ShowRequest),
    ("POST", "/api/create", {"model": "made", "from": "tiny", "stream": False}, ollama.CreateRequest),
    ("POST", "/api/copy", {"source": "tiny", "destination": "copied"}, ollama.CopyRequest),
    ("DELETE", "/api/delete", {"model": "tiny"}, ollama.DeleteRequest),
    ("POST", "/api/pull", {"model": "tiny", "stream": False}, ollama.PullRequest),
    ("POST", "/api/push", {"model": "tiny", "stream": False}, ollama.PushRequest),
    ("POST", "/api/rerank", {"model": "tiny", "query": "q", "documents": ["a", "b"]}, ollama.RerankRequest),
    ("POST", "/v1/rerank", {"model": "tiny", "query": "q", "documents": ["a", "b"]}, openai.RerankRequest),
    ("POST", "/v1/chat/completions", {"model": "tiny", "messages": HI}, openai.ChatCompletionRequest),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi"}, openai.CompletionRequest),
    ("POST", "/v1/embeddings", {"model": "tiny", "input": "hi"}, openai.EmbeddingRequest),
    ("POST", "/v1/responses", {"model": "tiny", "input": "hi"}, openai.Routed),
    ("POST", "/v1/messages", {"model": "tiny", "max_tokens": 5, "messages": HI}, openai.Routed),
    ("POST", "/v1/messages/count_tokens", {"model": "tiny", "messages": HI}, openai.Routed),
]
# Routes that change the store: their valid bodies are never sent.
WRITES = {"/api/create", "/api/copy", "/api/delete", "/api/pull", "/api/push"}
# Where a name becomes a path each its own way (every route resolves one as /api/show does): every
# hostile name there, a few elsewhere.
EVERY_NAME = WRITES | {"/api/show", "/api/chat", "/v1/chat/completions"}
# What every route of a family shares (body limit, the options Struct) is tried on one of each.
ONE_PER_FAMILY = {"/api/chat", "/api/show", "/v1/chat/completions", "/v1/messages"}

HOSTILE_NAMES = [
    "..", "../..", "../../secret/secret.txt", "../../../../../../etc/passwd", "/etc/passwd", "/", "\\",
    "..\\..\\secret", "a/../../b", "tiny\0", "ti\0ny:latest", "%2e%2e%2f%2e%2e%2fsecret", "..%2F..%2Fsecret",
    "%00", "tiny/..", "tiny:../../x", "C:\\Windows\\system32", "file:///etc/passwd", "http://127.0.0.1:9/x",
    "~/.ssh/id_rsa", "\u202etiny", "x" * 2000, "a:" + "b" * 2000, " ", "tiny:", ":latest", "./tiny",
]
HOSTILE_DIGESTS = [
    "sha256:../../secret/secret.txt", "sha256-" + "0" * 64, "sha256:" + "0" * 63, "sha256:" + "g" * 64,
    "sha256:" + "0" * 2000, "..", "%2e%2e%2fsecret", "sha256:%2e%2e%2f" + "0" * 56, "sha256:" + "0" * 64 + "%00",
    "sha256:" + "0" * 64 + "/..", "%2Fetc%2Fpasswd", "sha512:" + "0" * 128, "SHA256:" + "0" * 64,
]

# A wrong value of each JSON type; the first the Struct refuses is sent for a field.
_WRONG = [{"nested": [1]}, [["x"]], "text", 12.5, 7, True, None, [{"a": "b"}], {"role": 1}]


def _name_fields(struct: type) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(struct)
            if f.encode_name in ("model", "name", "source", "destination", "from")]


def _wrong_types(body: dict[str, Any], struct: type, options: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """The body with one field made the wrong type, for every field of the Struct (and of its options)."""
    for f in msgspec.structs.fields(struct):
        for wrong in _WRONG:
            candidate = {**body, f.encode_name: wrong}
            try:
                msgspec.convert(candidate, struct, strict=True)
            except msgspec.ValidationError:
                yield f"{f.encode_name}={wrong!r}", candidate
                break
    if options and any(f.encode_name == "options" for f in msgspec.structs.fields(struct)):
        for f in msgspec.structs.fields(Options):
            yield f"options.{f.name}", {**body, "options": {f.name: {"wrong": True}}}


def _bad_bodies(path: str, body: dict[str, Any], struct: type) -> Iterator[tuple[str, bytes, str]]:
    """(what, body, content type) that must be refused."""
    raw = json.dumps(body).encode()
    ct = "application/json"
    yield "empty", b"", ct
    yield "whitespace", b" \r\n\t ", ct
    yield "truncated", raw[: len(raw) // 2], ct
    yield "invalid", b"{model: tiny, 'x': }", ct
    for top in (b"[]", b"null", b'"tiny"', b"42", b"true"):
        yield f"top-level {top!r}", top, ct
    yield "NaN", raw[:-1] + b', "model": NaN}', ct
    yield "Infinity", b'{"model": "tiny", "keep_alive": Infinity}', ct
    yield "invalid UTF-8", raw.replace(b'"tiny"', b'"ti\xff\xfeny"'), ct
    yield "lone surrogate", raw.replace(b'"tiny"', b'"\\ud800"') if b'"tiny"' in raw else b'"\\ud800"', ct
    yield "duplicate top-level", raw + raw, ct
    yield "deep array", b"[" * 100_000 + b"]" * 100_000, ct
    yield "deep object", raw[:-1] + b', "format": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}", ct
    yield "form", b"model=tiny&prompt=hi", "application/x-www-form-urlencoded"
    yield "multipart", b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ntiny\r\n--b--\r\n", \
        "multipart/form-data; boundary=b"
    names = _name_fields(struct)
    if path in ONE_PER_FAMILY:
        yield "10 MB name", json.dumps({**body, names[0]: TEN_MB}).encode(), ct
    for name in names:
        # `model` and `name` are one field under two names: the hostile one is the only one.
        rest = {k: v for k, v in body.items() if k not in ("model", "name")} if name in ("model", "name") else body
        for hostile in HOSTILE_NAMES if path in EVERY_NAME else HOSTILE_NAMES[::6]:
            yield f"{name}={hostile[:40]!r}", json.dumps({**rest, name: hostile}).encode(), ct
    for what, wrong in _wrong_types(body, struct, path in ONE_PER_FAMILY):
        yield f"wrong type {what}", json.dumps(wrong).encode(), ct
    if "options" in {f.encode_name for f in msgspec.structs.fields(struct)}:
        for option, value in (("num_thread", 10**6), ("num_batch", 0), ("num_gpu", 10**12), ("num_ctx", 10**30),
                              ("main_gpu", 2**40)):
            yield f"options.{option}={value}", json.dumps({**body, "options": {option: value}}).encode(), ct
        yield "options.temperature=1e999", raw[:-1] + b', "options": {"temperature": 1e999}}', ct
    if struct is ollama.CreateRequest:
        for digest in HOSTILE_DIGESTS:
            files = {"model": "made", "files": {"m.gguf": digest}}
            yield f"files digest {digest[:40]!r}", json.dumps(files).encode(), ct
        for filename in ("../../outside.gguf", "/etc/passwd", "a/../../b.gguf", "..\\x.gguf", "\\x.gguf"):
            digest = "sha256:" + hashlib.sha256(b"").hexdigest()
            yield f"files name {filename!r}", json.dumps({"model": "made", "files": {filename: digest}}).encode(), ct
            yield f"adapter name {filename!r}", json.dumps({"model": "made", "from": "tiny",
                                                             "adapters": {filename: digest}}).encode(), ct


def _odd_but_valid(body: dict[str, Any]) -> Iterator[tuple[str, bytes, str]]:
    """Served as Ollama serves them."""
    raw = json.dumps(body).encode()
    yield "unknown fields", json.dumps({**body, "unknown": {"deep": [1, 2]}, "zzz": None}).encode(), "application/json"
    yield "text/plain", raw, "text/plain"
    yield "no content type", raw, ""
    yield "whitespace around", b"\n  " + raw + b"  \n", "application/json"


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root (the logs, and the test home's cache, aside): its size and mtime."""
    out = {}
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        if path.is_file() and rel not in ("serve.log", "requests.jsonl") and not rel.startswith("home/"):
            st = path.stat()
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def _check_shape(path: str, r: httpx.Response, what: str) -> None:
    """A 4xx in the dialect's shape."""
    assert 400 <= r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if r.request.method == "HEAD":
        return
    if r.text in ("404 page not found", "405 method not allowed") and not path.startswith("/v1/"):
        return  # a path no route matches (`..` resolved by the client), answered as Ollama's router does
    body = r.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and isinstance(body["error"]["message"], str), (what, body)
    elif path.startswith("/v1/"):
        assert isinstance(body["error"]["message"], str) and body["error"]["type"], (what, body)
    else:
        assert isinstance(body["error"], str) and body["error"], (what, body)
    assert SECRET not in r.text and "Traceback" not in r.text, (what, r.text[:300])


def _healthy(srv: Server, client: httpx.Client) -> None:
    r = client.post(f"{srv.url}/api/chat", json={"model": "tiny", "messages": HI, "stream": False})
    assert r.status_code == 200 and r.json()["message"]["content"] == "Hi there", r.text
    assert [m["name"] for m in client.get(f"{srv.url}/api/tags").json()["models"]] == ["tiny:latest"]


@pytest.fixture
def watched(srv: Server) -> Iterator[httpx.Client]:
    """A client with a timeout (a hung connection fails the test); afterwards: the file system
    around the store as it was, no 5xx or traceback in the log, no runner given a file from
    outside the store, and the next request served."""
    root = srv.models.parent
    before, log_at = _tree(root), len(srv.log())
    cwd = sorted(os.listdir())
    with httpx.Client(timeout=30) as client:
        yield client
        _healthy(srv, client)
    assert _tree(root) == before
    assert sorted(os.listdir()) == cwd
    log = srv.log()[log_at:]
    assert "Traceback" not in log and SECRET not in log, log[-3000:]
    assert not re.search(r"llamagate\.request: \S+ \S+ 5\d\d ", log), log[-3000:]
    for argv in (r["argv"] for r in srv.requests() if "argv" in r):
        model = Path(argv[argv.index("--model") + 1])
        assert model.is_relative_to(srv.models), argv


@pytest.mark.parametrize(("method", "path", "body", "struct"), JSON_ROUTES, ids=[r[1] for r in JSON_ROUTES])
def test_bad_bodies_are_refused_in_the_dialects_shape(srv, watched, method, path, body, struct) -> None:
    cases = list(_bad_bodies(path, body, struct))
    assert len(cases) > 25

    def send(case: tuple[str, bytes, str]) -> None:
        what, content, content_type = case
        headers = {"Content-Type": content_type} if content_type else {}
        _check_shape(path, watched.request(method, f"{srv.url}{path}", content=content, headers=headers), what)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, cases))


# Served bodies go where tiny can answer them: not the store's writers, nor rerankers (tiny is none).
SERVED = [r for r in JSON_ROUTES if r[1] not in WRITES and not r[1].endswith("/rerank")]


@pytest.mark.parametrize(("method", "path", "body", "struct"), SERVED, ids=[r[1] for r in SERVED])
def test_odd_but_valid_bodies_are_served(srv, watched, method, path, body, struct) -> None:
    for what, content, content_type in _odd_but_valid(body):
        headers = {"Content-Type": content_type} if content_type else {}
        r = watched.request(method, f"{srv.url}{path}", content=content, headers=headers)
        assert r.status_code == 200, f"{what}: {r.status_code} {r.text[:300]}"


def _in_path(text: str) -> list[str]:
    """A path segment as a client may send it: as it is (the client resolves `..` itself), and
    with every byte percent-encoded (the server sees the dots and slashes)."""
    return [text.replace("\0", "%00"), "".join(f"%{b:02X}" for b in text.encode())]


def test_hostile_digests_and_model_paths(srv, watched) -> None:
    data = SECRET.encode()
    for digest in HOSTILE_DIGESTS:
        for method in ("HEAD", "POST"):
            for segment in _in_path(digest):
                content = data if method == "POST" else None
                r = watched.request(method, f"{srv.url}/api/blobs/{segment}", content=content)
                _check_shape("/api/blobs", r, f"{method} {segment}")
    for name in HOSTILE_NAMES:
        r = watched.get(f"{srv.url}/v1/models/{_in_path(name)[1]}")
        if name == "/":
            assert r.json()["object"] == "list"  # /v1/models// is /v1/models/ itself: the list
            continue
        _check_shape("/v1/models", r, name)
        for form in ({"model": name}, {"model": TEN_MB[:100_000]}):
            r = watched.post(f"{srv.url}/ui/unload", data=form)
            _check_shape("/ui/unload", r, name)
        r = watched.post(f"{srv.url}/ui/pull", data={"model": name})
        assert r.status_code in (204, 303) or 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
    for content in (b"", b"\xff\xfe", b"--b\r\nbroken", b"model=" + b"%" * 1000):
        r = watched.post(f"{srv.url}/ui/unload", content=content,
                         headers={"Content-Type": "multipart/form-data; boundary=b"})
        _check_shape("/ui/unload", r, repr(content[:20]))


@pytest.mark.parametrize("options", [{"num_thread": 10**6}, {"num_batch": 0}, {"num_gpu": 10**12}],
                         ids=lambda o: next(iter(o)))
def test_a_load_option_llama_server_cannot_take_is_refused_before_it_crashes_the_runner(server, options) -> None:
    """Passed on, each made the real llama-server exit while loading: a 500 after seconds, and a
    crash backoff that refused every other client of the model for a while."""
    r = httpx.post(f"{server.url}/api/generate", timeout=60, json={
        "model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 1, **options}})
    assert r.status_code == 400 and next(iter(options)) in r.json()["error"], r.text
    r = httpx.post(f"{server.url}/api/generate", timeout=60, json={
        "model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 1}})
    assert r.status_code == 200, r.text
