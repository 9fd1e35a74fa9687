"""Loopback stand-ins for the registries a pull talks to, with faults to inject.

`Cdn` serves blobs with HTTP Range and records every byte range it sent; `OllamaRegistry` serves
manifests as registry.ollama.ai does, answers blob requests with a 307 to the CDN, takes pushes
and hands out tokens to signed requests;
`HuggingFace` builds Ollama manifests from a repository's GGUF files, the tag naming the
quantization (case-insensitive, `latest` meaning Q4_K_M), and sends blobs with a 302.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
MODEL = "application/vnd.ollama.image.model"
PARAMS = "application/vnd.ollama.image.params"
LICENSE = "application/vnd.ollama.image.license"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Served:
    """One GET the CDN answered: the range asked for and how many bytes actually went out."""

    hex: str
    start: int
    end: int  # exclusive
    sent: int = 0


@dataclass
class Blob:
    data: bytes
    corrupt: bool = False  # serve other bytes than the digest promises
    drop_at: int | None = None  # one-shot: close the connection after this many bytes of the blob
    pause_after: int | None = None  # stall every response once this many bytes went out in total
    resume: threading.Event = field(default_factory=threading.Event)
    throttle: float = 0.0  # seconds of sleep per 64 KB chunk
    sent: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: object, client_address: object) -> None:
        # A downloader that hangs up (killed, cancelled, done with a keep-alive connection)
        # is part of the tests, not an error of this server.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def _record(self) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, dict(self.headers)))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class Cdn(_Server):
    def __init__(self) -> None:
        self.blobs: dict[str, Blob] = {}
        self.served: list[Served] = []
        super().__init__(_CdnHandler)

    def add(self, data: bytes, **faults: object) -> str:
        digest = sha256(data)
        self.blobs[digest] = Blob(data, **faults)  # type: ignore[arg-type]
        return digest

    def served_for(self, hex_digest: str) -> list[Served]:
        with self.lock:
            return [s for s in self.served if s.hex == hex_digest]

    def bytes_for(self, hex_digest: str) -> int:
        return sum(s.sent for s in self.served_for(hex_digest))


class _CdnHandler(_Handler):
    server: Cdn

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._record()
        m = re.fullmatch(r"/blob/([0-9a-f]{64})", self.path.split("?")[0])
        blob = self.server.blobs.get(m.group(1)) if m else None
        if blob is None:
            self._send(404, b"no such blob")
            return
        data = bytes(b ^ 0xFF for b in blob.data) if blob.corrupt else blob.data
        start, end, status = 0, len(data), 200
        if r := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
            start, end, status = int(r.group(1)), min(int(r.group(2) or len(data) - 1) + 1, len(data)), 206
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        self.send_response(status)
        for key, value in {"Content-Length": str(end - start), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        served = Served(m.group(1), start, end)
        with self.server.lock:
            self.server.served.append(served)
        try:
            self._stream(blob, data, served, start, end)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the downloader went away (killed, or cancelled its download)

    def _stream(self, blob: Blob, data: bytes, served: Served, start: int, end: int) -> None:
        position = start
        while position < end:
            n = min(65536, end - position)
            with self.server.lock:
                if blob.drop_at is not None and position < blob.drop_at <= position + n:
                    n, drop = blob.drop_at - position, True
                    blob.drop_at = None
                else:
                    drop = False
                paused = blob.pause_after is not None and blob.sent >= blob.pause_after
            if paused:
                blob.resume.wait(60)
            if n:
                self.wfile.write(data[position : position + n])
                self.wfile.flush()
                with self.server.lock:
                    blob.sent += n
                    served.sent += n
                position += n
            if drop:
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if blob.throttle:
                time.sleep(blob.throttle)


def check_layer_progress(events: list, digests: list[str], verb: str, falls: int = 0) -> None:
    """A pull's or push's progress objects (the `ollama` client's): each blob's in the manifest's
    order, under `<verb> <12 hex>`, its `completed` growing to its `total`, going back at most
    `falls` times (bytes in flight lost with a dropped connection, sent again)."""
    moving = [e for e in events if e.digest]
    assert [d for i, d in enumerate(e.digest for e in moving) if i == 0 or moving[i - 1].digest != d] == digests
    for digest in digests:
        mine = [e for e in moving if e.digest == digest]
        assert all(e.status == f"{verb} {digest[7:19]}" for e in mine)
        done = [e.completed or 0 for e in mine]
        assert sum(b < a for a, b in zip(done, done[1:])) <= falls and done[-1] == mine[-1].total


def manifest_bytes(config: tuple[str, int], layers: list[tuple[str, str, int]]) -> bytes:
    """A manifest as Ollama's registry writes it: Go's field order, compact."""
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": f"sha256:{config[0]}", "size": config[1]},
        "layers": [{"mediaType": t, "digest": f"sha256:{d}", "size": s} for t, d, s in layers],
    }, separators=(",", ":")).encode()


def config_blob(file_type: str = "Q4_1") -> bytes:
    return json.dumps({"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                       "model_type": "135M", "file_type": file_type, "architecture": "amd64",
                       "os": "linux"}, separators=(",", ":")).encode()


def _errors(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


@dataclass
class Grant:
    """What a token lets its bearer do: pull the private models of `namespace`, and push to it
    when the token was asked for with a push scope."""

    namespace: str
    push: bool


class OllamaRegistry(_Server):
    """registry.ollama.ai's protocol: manifests, blobs by 307 to the CDN, uploads (sessions,
    chunked `PATCH`es or one `PUT`, their status, cross-repository mounts) and bearer tokens from `/token`,
    whose requests must be signed with a known ed25519 key as Ollama signs them."""

    def __init__(self, cdn: Cdn) -> None:
        self.cdn = cdn
        self.manifests: dict[tuple[str, str, str], bytes] = {}
        self.repo_blobs: dict[tuple[str, str], set[str]] = {}  # which repository links which blobs
        self.uploads: dict[str, bytearray] = {}
        self.private: set[str] = set()  # namespaces whose models only their owner may pull
        self.owners: dict[str, str] = {}  # base64 public key -> the namespace it owns
        self.open_namespaces: set[str] = set()  # any token, even from an unsigned request, may push here
        self.signed = True  # token requests must carry a valid signature
        self.mounts = True  # cross-repository mounts offered
        self.drop_patch_at: int | None = None  # one-shot: keep this many bytes of a PATCH, then hang up
        self.tokens: dict[str, Grant] = {}
        self.token_requests: list[tuple[str, dict[str, str]]] = []
        self.nonces: set[str] = set()
        super().__init__(_RegistryHandler)

    def publish(self, name: str, layers: list[tuple[str, bytes]], **faults: object) -> bytes:
        """Put a model at `namespace/model:tag`; `faults` apply to its model layer's blob."""
        namespace, model, tag = re.fullmatch(r"([^/]+)/([^:]+):(.+)", name).groups()
        config = config_blob()
        entries = []
        for media_type, data in layers:
            digest = self.cdn.add(data, **(faults if media_type == MODEL else {}))
            entries.append((media_type, digest, len(data)))
        config_digest = self.cdn.add(config)
        raw = manifest_bytes((config_digest, len(config)), entries)
        self.manifests[(namespace, model, tag)] = raw
        self.repo_blobs.setdefault((namespace, model), set()).update([config_digest, *(d for _, d, _ in entries)])
        return raw

    def authorize(self, public_key: str, namespace: str) -> None:
        self.owners[public_key] = namespace


EMPTY_BODY_HASH = base64.b64encode(sha256(b"").encode()).decode()


class _RegistryHandler(_Handler):
    server: OllamaRegistry
    timeout = 2  # a TLS hello sent to this plain server fails fast instead of waiting for a line

    def _body(self) -> bytes | None:
        """The request's bytes; None (answered 411) for a body without a Content-Length."""
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            self._send(411, _errors("UNSUPPORTED", "a Content-Length is required"))
            return None
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _grant(self) -> Grant | None:
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        return self.server.tokens.get(token)

    def _allowed(self, namespace: str, model: str, push: bool, challenge: bool = True) -> bool:
        """Whether the token lets this request through; if not, a 401 with the challenge."""
        grant = self._grant()
        if push:
            ok = grant is not None and grant.push and (
                grant.namespace == namespace or namespace in self.server.open_namespaces)
        else:
            ok = namespace not in self.server.private or (grant is not None and grant.namespace == namespace)
        if not ok and challenge:
            scope = f"repository:{namespace}/{model}:{'pull,push' if push else 'pull'}"
            self._send(401, _errors("UNAUTHORIZED", "authentication required"), {
                "Content-Type": "application/json",
                "WWW-Authenticate": f'Bearer realm="{self.server.url}/token",service="registry.ollama.ai",'
                                    f'scope="{scope}"'})
        return ok

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._record()
        path = self.path.split("?")[0]
        if path == "/token":
            self._token()
        elif m := re.fullmatch(r"/v2/([^/]+)/([^/]+)/manifests/([^/]+)", path):
            if not self._allowed(m.group(1), m.group(2), push=False):
                return
            raw = self.server.manifests.get(m.groups())
            if raw is None:
                self._send(404, _errors("MANIFEST_UNKNOWN", "manifest unknown"), {"Content-Type": "application/json"})
            else:
                self._send(200, raw, {"Content-Type": MANIFEST})
        elif re.fullmatch(r"/v2/[^/]+/[^/]+/blobs/uploads/[0-9a-f]+", path):
            if session := self._session():  # an upload's status: how many bytes are in
                namespace, model, uuid, data = session
                self._send(204, b"", {"Range": f"0-{max(len(data) - 1, 0)}", "Docker-Upload-UUID": uuid,
                                      "Location": f"/v2/{namespace}/{model}/blobs/uploads/{uuid}?_state={len(data)}"})
        elif m := re.fullmatch(r"/v2/([^/]+)/([^/]+)/blobs/sha256:([0-9a-f]{64})", path):
            if not self._allowed(m.group(1), m.group(2), push=False):
                return
            if m.group(3) in self.server.repo_blobs.get((m.group(1), m.group(2)), set()):
                self._send(307, b"", {"Location": f"{self.server.cdn.url}/blob/{m.group(3)}?sig=x"})
            else:
                self._send(404, _errors("BLOB_UNKNOWN", "blob unknown to registry"))
        else:
            self._send(404, b"404 page not found")

    def _token(self) -> None:
        """Ollama's token endpoint: a signed GET of `<realm>?nonce&scope&service&ts`."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        query = parse_qs(urlsplit(self.path).query)
        self.server.token_requests.append((self.path, dict(self.headers)))
        namespace = ""
        signature = self.headers.get("Authorization", "")
        if self.server.signed or signature:
            public, _, sig = signature.partition(":")
            try:
                blob = base64.b64decode(public)
                key = Ed25519PublicKey.from_public_bytes(blob[-32:])  # the wire form ends with the raw key
                data = f"GET,{self.server.url}{self.path},{EMPTY_BODY_HASH}".encode()
                key.verify(base64.b64decode(sig), data)
            except (ValueError, InvalidSignature):
                self._send(401, _errors("UNAUTHORIZED", "invalid signature"))
                return
            nonce, ts = query.get("nonce", [""])[0], int(query.get("ts", ["0"])[0])
            if not nonce or nonce in self.server.nonces or abs(time.time() - ts) > 300:
                self._send(401, _errors("UNAUTHORIZED", "stale or replayed request"))
                return
            self.server.nonces.add(nonce)
            namespace = self.server.owners.get(public, "")
        token = sha256(os.urandom(16))
        self.server.tokens[token] = Grant(namespace, any(s.endswith("push") for s in query.get("scope", [])))
        self._send(200, json.dumps({"token": token}).encode(), {"Content-Type": "application/json"})

    def do_POST(self) -> None:
        self._record()
        parts = urlsplit(self.path)
        m = re.fullmatch(r"/v2/([^/]+)/([^/]+)/blobs/uploads/", parts.path)
        if not m:
            self._send(404, b"404 page not found")
            return
        namespace, model = m.groups()
        if self._body() is None or not self._allowed(namespace, model, push=True):
            return
        query = parse_qs(parts.query)
        digest, source = query.get("mount", [""])[0], query.get("from", [""])[0]
        if digest and source and self.server.mounts:
            src_namespace, _, src_model = source.partition("/")
            hex_digest = digest.removeprefix("sha256:")
            if (hex_digest in self.server.repo_blobs.get((src_namespace, src_model), set())
                    and self._allowed(src_namespace, src_model, push=False, challenge=False)):
                self.server.repo_blobs.setdefault((namespace, model), set()).add(hex_digest)
                self._send(201, b"", {"Location": f"/v2/{namespace}/{model}/blobs/{digest}",
                                      "Docker-Content-Digest": digest})
                return
        uuid = sha256(os.urandom(16))[:32]
        self.server.uploads[uuid] = bytearray()
        self._send(202, b"", {"Location": f"/v2/{namespace}/{model}/blobs/uploads/{uuid}?_state=0",
                              "Docker-Upload-UUID": uuid, "Range": "0-0"})

    def _session(self) -> tuple[str, str, str, bytearray] | None:
        parts = urlsplit(self.path)
        m = re.fullmatch(r"/v2/([^/]+)/([^/]+)/blobs/uploads/([0-9a-f]+)", parts.path)
        if not m or m.group(3) not in self.server.uploads:
            self._send(404, _errors("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry"))
            return None
        if not self._allowed(m.group(1), m.group(2), push=True):
            return None
        return m.group(1), m.group(2), m.group(3), self.server.uploads[m.group(3)]

    def do_PATCH(self) -> None:
        self._record()
        if (drop := self.server.drop_patch_at) is not None:
            self.server.drop_patch_at = None
            partial = self.rfile.read(drop)
            if session := self._session():
                session[3].extend(partial)  # as a registry writes a stream: what came is kept
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        body = self._body()
        session = None if body is None else self._session()
        if session is None:
            return
        namespace, model, uuid, data = session
        r = re.fullmatch(r"(\d+)-(\d+)", self.headers.get("Content-Range", ""))
        if r is None or int(r.group(1)) != len(data) or int(r.group(2)) - int(r.group(1)) + 1 != len(body):
            self._send(416, _errors("BLOB_UPLOAD_INVALID", "bad Content-Range"), {"Range": f"0-{len(data) - 1}"})
            return
        data += body
        self._send(202, b"", {"Location": f"/v2/{namespace}/{model}/blobs/uploads/{uuid}?_state={len(data)}",
                              "Range": f"0-{len(data) - 1}", "Docker-Upload-UUID": uuid})

    def do_PUT(self) -> None:
        self._record()
        body = self._body()
        if body is None:
            return
        if m := re.fullmatch(r"/v2/([^/]+)/([^/]+)/manifests/([^/]+)", self.path):
            self._put_manifest(*m.groups(), body)
            return
        session = self._session()
        if session is None:
            return
        namespace, model, uuid, data = session
        data += body
        digest = parse_qs(urlsplit(self.path).query).get("digest", [""])[0]
        if digest != f"sha256:{sha256(bytes(data))}":
            self._send(400, _errors("DIGEST_INVALID", "provided digest did not match uploaded content"))
            return
        del self.server.uploads[uuid]
        self.server.cdn.add(bytes(data))
        self.server.repo_blobs.setdefault((namespace, model), set()).add(digest.removeprefix("sha256:"))
        self._send(201, b"", {"Location": f"/v2/{namespace}/{model}/blobs/{digest}", "Docker-Content-Digest": digest})

    def _put_manifest(self, namespace: str, model: str, tag: str, body: bytes) -> None:
        if not self._allowed(namespace, model, push=True):
            return
        if self.headers.get("Content-Type") != MANIFEST:
            self._send(400, _errors("MANIFEST_INVALID", "unexpected media type"))
            return
        manifest = json.loads(body)
        linked = self.server.repo_blobs.get((namespace, model), set())
        for layer in [manifest["config"], *manifest["layers"]]:
            if layer["digest"].removeprefix("sha256:") not in linked:
                self._send(400, _errors("MANIFEST_BLOB_UNKNOWN", f"blob unknown to registry: {layer['digest']}"))
                return
        self.server.manifests[(namespace, model, tag)] = body
        self._send(201, b"", {"Docker-Content-Digest": f"sha256:{sha256(body)}"})


class HuggingFace(_Server):
    """Repositories of GGUF files behind the registry protocol, as hf.co serves them."""

    def __init__(self, cdn: Cdn) -> None:
        self.cdn = cdn
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}
        super().__init__(_HuggingFaceHandler)

    def manifest(self, user: str, repo: str, tag: str) -> bytes | None:
        files = self.repos.get((user, repo), {})
        quant = "q4_k_m" if tag.lower() == "latest" else tag.lower()
        match = [f for f in files if f.lower() == quant or f.lower().endswith(f"-{quant}.gguf")]
        if not match:
            return None
        data = files[match[0]]
        params = json.dumps({"stop": ["<|im_end|>"]}).encode()
        config = config_blob(quant.upper())
        layers = [(MODEL, self.cdn.add(data), len(data)), (PARAMS, self.cdn.add(params), len(params))]
        return manifest_bytes((self.cdn.add(config), len(config)), layers)


class _HuggingFaceHandler(_Handler):
    server: HuggingFace

    def do_GET(self) -> None:
        self._record()
        if not self.headers.get("User-Agent", "").startswith("ollama/"):
            # hf.co answers the registry protocol to Ollama only.
            self._send(400, b'{"error":"not an ollama client"}')
        elif m := re.fullmatch(r"/v2/([^/]+)/([^/]+)/manifests/([^/]+)", self.path):
            raw = self.server.manifest(*m.groups())
            if raw is None:
                self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            else:
                self._send(200, raw, {"Content-Type": MANIFEST})
        elif m := re.fullmatch(r"/v2/[^/]+/[^/]+/blobs/sha256:([0-9a-f]{64})", self.path):
            self._send(302, b"", {"Location": f"{self.server.cdn.url}/blob/{m.group(1)}"})
        else:
            self._send(404, b"")
