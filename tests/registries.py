"""Loopback stand-ins for the registries a pull talks to, with faults to inject.

`Cdn` serves blobs with HTTP Range and records every byte range it sent; `OllamaRegistry` serves
manifests as registry.ollama.ai does and answers blob requests with a 307 to the CDN;
`HuggingFace` builds Ollama manifests from a repository's GGUF files, the tag naming the
quantization (case-insensitive, `latest` meaning Q4_K_M), and sends blobs with a 302.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


class OllamaRegistry(_Server):
    def __init__(self, cdn: Cdn) -> None:
        self.cdn = cdn
        self.manifests: dict[tuple[str, str, str], bytes] = {}
        super().__init__(_RegistryHandler)

    def publish(self, name: str, layers: list[tuple[str, bytes]], **faults: object) -> bytes:
        """Put a model at `namespace/model:tag`; `faults` apply to its model layer's blob."""
        namespace, model, tag = re.fullmatch(r"([^/]+)/([^:]+):(.+)", name).groups()
        config = config_blob()
        entries = []
        for media_type, data in layers:
            digest = self.cdn.add(data, **(faults if media_type == MODEL else {}))
            entries.append((media_type, digest, len(data)))
        raw = manifest_bytes((self.cdn.add(config), len(config)), entries)
        self.manifests[(namespace, model, tag)] = raw
        return raw


class _RegistryHandler(_Handler):
    server: OllamaRegistry
    timeout = 2  # a TLS hello sent to this plain server fails fast instead of waiting for a line

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._record()
        if m := re.fullmatch(r"/v2/([^/]+)/([^/]+)/manifests/([^/]+)", self.path):
            raw = self.server.manifests.get(m.groups())
            if raw is None:
                body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
                self._send(404, body, {"Content-Type": "application/json"})
            else:
                self._send(200, raw, {"Content-Type": MANIFEST})
        elif m := re.fullmatch(r"/v2/[^/]+/[^/]+/blobs/sha256:([0-9a-f]{64})", self.path):
            self._send(307, b"", {"Location": f"{self.server.cdn.url}/blob/{m.group(1)}?sig=x"})
        else:
            self._send(404, b"404 page not found")


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
