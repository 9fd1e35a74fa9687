"""llamagate behind the shipped reverse proxy configurations, run for real over HTTPS: nginx from
contrib/nginx/llamagate.conf and Caddy from contrib/caddy/Caddyfile, each only with its ports,
addresses and certificate paths replaced. Tokens arrive one by one through them, a client that
leaves frees its slot, headers and big uploads go through as sent."""

from __future__ import annotations

import gc
import http.server
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import pytest
from conftest import ROOT, Server, free_port, llamagate_cmd, slot_busy, wait_until

NGINX_CONF = ROOT / "contrib" / "nginx" / "llamagate.conf"
CADDYFILE = ROOT / "contrib" / "caddy" / "Caddyfile"
SETUP = "run contrib/setup.sh test, which installs nginx and caddy from Debian"

# A raw continuation rarely meets an end-of-text token: a generation runs to num_predict.
STORY = "Once upon a time, in a land far away, there lived a dragon and a knight. Every day,"
TOKENS = 48  # a second or more at one thread: long enough to see tokens arrive apart
LONG = 4000  # tokens: minutes at one thread, were the generation left running


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not found:
        pytest.fail(f"{name} is missing: {SETUP}")
    return found


def _edited(path: Path, edits: dict[str, str]) -> str:
    """The shipped file with each of `edits` replaced: only what a test machine must change."""
    text = path.read_text()
    for old, new in edits.items():
        assert text.count(old) == 1, f"{path} no longer has {old!r} once: update this test's edits"
        text = text.replace(old, new)
    return text


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{proc.args[0]} did not come up:\n{log.read_text(errors='replace') if log.exists() else ''}")


@dataclass
class Proxy:
    """A reverse proxy process on a loopback port, and the TLS context that trusts it."""

    name: str
    url: str
    ca: Path  # the certificate that signed the proxy's
    tls: ssl.SSLContext
    proc: subprocess.Popen
    log: Path

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.tls, **kwargs)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _certificate(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "llamagate.crt", tmp / "llamagate.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def start_nginx(tmp: Path, upstream: int, edits: dict[str, str] | None = None) -> Proxy:
    """Our own nginx, in the foreground as this user on a free port, with the shipped server
    block included in a minimal `http {}`; the system's nginx service is never touched."""
    binary = _binary("nginx")
    tmp.mkdir(parents=True, exist_ok=True)
    cert, key = _certificate(tmp)
    port = free_port()
    (tmp / "llamagate.conf").write_text(_edited(NGINX_CONF, {
        "server 127.0.0.1:11434;": f"server 127.0.0.1:{upstream};",
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "ssl_certificate     /etc/ssl/certs/llamagate.crt;": f"ssl_certificate {cert};",
        "ssl_certificate_key /etc/ssl/private/llamagate.key;": f"ssl_certificate_key {key};",
        **(edits or {}),
    }))
    # As root, nginx's workers would run as nobody, who can't read the test's files.
    user = f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.geteuid() == 0 else ""
    temps = "\n".join(f"    {kind}_temp_path {tmp}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                             "scgi"))
    (tmp / "nginx.conf").write_text(f"""{user}
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
{temps}
    include {tmp}/llamagate.conf;
}}
""")
    log = tmp / "error.log"
    proc = subprocess.Popen([binary, "-p", f"{tmp}/", "-c", str(tmp / "nginx.conf"), "-e", str(log),
                             "-g", f"daemon off; pid {tmp}/nginx.pid;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _wait_for_port(port, proc, log)
    return Proxy("nginx", f"https://127.0.0.1:{port}", cert, ssl.create_default_context(cafile=str(cert)), proc, log)


def start_caddy(tmp: Path, upstream: int) -> Proxy:
    """Our own Caddy, in the foreground on a free port, with its admin endpoint off, its CA and
    state in `tmp` and the system trust store left alone; the shipped file after a global block."""
    binary = _binary("caddy")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    site = _edited(CADDYFILE, {
        "llamagate.lan {": f"https://127.0.0.1:{port} {{\n\tbind 127.0.0.1",
        "reverse_proxy 127.0.0.1:11434\n": f"reverse_proxy 127.0.0.1:{upstream}\n",
    })
    (tmp / "Caddyfile").write_text(f"""{{
\tadmin off
\tskip_install_trust
\tauto_https disable_redirects
\thttp_port {free_port()}
\thttps_port {port}
\tstorage file_system {tmp}/data
}}

{site}""")
    log = tmp / "caddy.log"
    env = {**os.environ, "HOME": str(tmp), "XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "config")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "run", "--adapter", "caddyfile", "--config", str(tmp / "Caddyfile")],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    _wait_for_port(port, proc, log)
    root = tmp / "data" / "pki" / "authorities" / "local" / "root.crt"
    assert wait_until(root.exists, timeout=10), log.read_text()
    tls = ssl.create_default_context(cafile=str(root))

    def serving() -> bool:  # the site's certificate is issued a moment after the CA's
        try:
            httpx.get(f"https://127.0.0.1:{port}/", verify=tls, timeout=2)
            return True
        except httpx.TransportError:
            return False

    assert wait_until(serving, timeout=10, interval=0.1), log.read_text()
    return Proxy("caddy", f"https://127.0.0.1:{port}", root, tls, proc, log)


START = {"nginx": start_nginx, "caddy": start_caddy}


@pytest.fixture(scope="module")
def srv(tmp_path_factory, smollm2, llama_server_binary) -> Iterator[Server]:
    """One slot, so that a generation left running would be seen in /slots and delay the next."""
    srv = Server(tmp_path_factory.mktemp("rproxy"), env={"OLLAMA_NUM_PARALLEL": "1"})
    srv.create("smollm2", smollm2)
    yield srv
    srv.stop()


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def proxy(request, tmp_path_factory, srv) -> Iterator[Proxy]:
    p = START[request.param](tmp_path_factory.mktemp(request.param), srv.port)
    yield p
    p.stop()


def _load(srv: Server) -> None:
    r = httpx.post(f"{srv.url}/api/generate", json={"model": "smollm2"}, timeout=120)
    assert r.status_code == 200, r.text


def _arrivals(client: httpx.Client, path: str, body: dict, content) -> tuple[float, list[float]]:
    """Stream `body` to `path`: (seconds from sending to the end, arrival times of the chunks with
    content, from sending)."""
    times = []
    sent = time.monotonic()
    with client.stream("POST", path, json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if content(line):
                times.append(time.monotonic() - sent)
    return time.monotonic() - sent, times


def _assert_one_by_one(total: float, times: list[float]) -> None:
    """Tokens arrive as they are generated: spread over the generation, not in one burst."""
    assert len(times) >= 3, times
    assert times[-1] - times[0] >= 0.3 * total, (total, times)
    bursts, size = [], 1  # runs of chunks that came within 5 ms of the one before
    for before, after in zip(times, times[1:]):
        if after - before < 0.005:
            size += 1
        else:
            bursts.append(size)
            size = 1
    bursts.append(size)
    assert max(bursts) <= len(times) / 2, (total, times)


def _ndjson_content(line: str) -> bool:
    return bool(line) and bool(json.loads(line).get("response"))


def _sse_content(line: str) -> bool:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return False
    choices = json.loads(line[6:])["choices"]
    return bool(choices and choices[0]["delta"].get("content"))


def _generate(tokens: int, **extra) -> dict:
    return {"model": "smollm2", "prompt": STORY, "raw": True, "options": {"num_predict": tokens}, **extra}


def test_ndjson_tokens_arrive_one_by_one(srv, proxy):
    _load(srv)
    with proxy.client() as client:
        total, times = _arrivals(client, "/api/generate", _generate(TOKENS), _ndjson_content)
    _assert_one_by_one(total, times)


def test_sse_tokens_arrive_one_by_one(srv, proxy):
    _load(srv)
    with proxy.client() as client:
        total, times = _arrivals(client, "/v1/chat/completions", {
            "model": "smollm2", "stream": True, "max_tokens": TOKENS,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}, _sse_content)
    _assert_one_by_one(total, times)


def test_streamed_answers_ask_nginx_not_to_buffer(srv):
    for path, body in [("/api/generate", _generate(2)),
                       ("/api/chat", {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}],
                                      "options": {"num_predict": 2}}),
                       ("/v1/chat/completions", {"model": "smollm2", "stream": True, "max_tokens": 2,
                                                 "messages": [{"role": "user", "content": "hi"}]})]:
        with httpx.stream("POST", f"{srv.url}{path}", json=body, timeout=120) as r:
            assert r.status_code == 200
            assert r.headers["x-accel-buffering"] == "no", path
            r.read()
    answer = httpx.post(f"{srv.url}/api/generate", json=_generate(2, stream=False), timeout=120)
    assert "x-accel-buffering" not in answer.headers


def test_an_nginx_left_buffering_still_streams_tokens(srv, tmp_path):
    """nginx honours llamagate's `X-Accel-Buffering: no` where `proxy_buffering` was left on."""
    _load(srv)
    buffering = start_nginx(tmp_path, srv.port, {"proxy_buffering off;": "proxy_buffering on;"})
    try:
        with buffering.client() as client:
            total, times = _arrivals(client, "/api/generate", _generate(TOKENS), _ndjson_content)
    finally:
        buffering.stop()
    _assert_one_by_one(total, times)


def _assert_slot_freed(srv: Server, gave_up: float) -> None:
    """Once the client is gone, the slot is free within a second or two and the next request
    is served promptly."""
    assert wait_until(lambda: not slot_busy(srv), timeout=5, interval=0.3), srv.log()[-6000:]
    assert time.monotonic() - gave_up < 3
    started = time.monotonic()
    assert httpx.post(f"{srv.url}/api/generate", json=_generate(2, stream=False), timeout=60).status_code == 200
    assert time.monotonic() - started < 5


def test_a_client_that_times_out_frees_the_slot(srv, proxy):
    _load(srv)
    seen: list[bool] = []
    # Polled gently: /slots is answered by llama-server's one busy thread.
    watcher = threading.Thread(target=lambda: seen.append(wait_until(lambda: slot_busy(srv), timeout=3, interval=0.3)))
    watcher.start()
    with proxy.client(timeout=httpx.Timeout(10, read=1)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/api/generate", json=_generate(LONG, stream=False))
    gc.collect()  # the timed-out response holds its socket until collected
    watcher.join()
    gave_up = time.monotonic()
    assert seen == [True], "the abandoned generation never started"
    _assert_slot_freed(srv, gave_up)


def test_a_client_that_leaves_mid_stream_frees_the_slot(srv, proxy):
    _load(srv)
    with proxy.client() as client:
        with client.stream("POST", "/api/generate", json=_generate(LONG), timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(5):
                assert json.loads(next(lines))["response"] is not None
            assert slot_busy(srv)
    gave_up = time.monotonic()
    _assert_slot_freed(srv, gave_up)


def test_the_ollama_client_chats_through_the_proxy(srv, proxy):
    client = ollama.Client(host=proxy.url, verify=proxy.tls)
    messages = [{"role": "user", "content": "Say hello."}]
    answer = client.chat(model="smollm2", messages=messages, options={"num_predict": 8})
    assert answer.message.role == "assistant" and answer.message.content
    parts = list(client.chat(model="smollm2", messages=messages, options={"num_predict": 8}, stream=True))
    assert len(parts) >= 2 and parts[-1].done
    assert [m.model for m in client.list().models] == ["smollm2:latest"]


def test_the_cli_lists_models_through_the_proxy(srv, proxy):
    """`OLLAMA_HOST=https://…`, trusting the proxy's certificate as any httpx client does."""
    listed = subprocess.run([*llamagate_cmd(), "list"], capture_output=True, text=True, timeout=60,
                            env={**srv.env, "OLLAMA_HOST": proxy.url, "SSL_CERT_FILE": str(proxy.ca)})
    assert listed.returncode == 0, listed.stderr
    assert "smollm2:latest" in listed.stdout


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers with the headers it got, the body's size, and whether the body's first bytes came
    before the client had sent the rest."""

    first_bytes = threading.Event()

    def do_POST(self) -> None:
        size = int(self.headers["Content-Length"])
        got = len(self.rfile.read(1))
        type(self).first_bytes.set()
        while got < size:
            got += len(self.rfile.read(min(1 << 20, size - got)))
        body = json.dumps({"headers": dict(self.headers.items()), "size": got}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(params=["nginx", "caddy"])
def echoed(request, tmp_path) -> Iterator[Proxy]:
    """The proxy in front of an echo server instead of llamagate."""
    echo = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    p = START[request.param](tmp_path, echo.server_address[1])
    yield p
    p.stop()
    echo.shutdown()


def test_headers_and_a_big_upload_go_through_as_sent(echoed):
    """Host, X-Forwarded-* and Authorization reach llamagate; an upload bigger than nginx's
    default limit (1 MB) is accepted and streams through (the start arrives before the client
    sent the rest), instead of being spooled first."""
    _Echo.first_bytes.clear()
    size, piece = 8 << 20, 1 << 20
    streamed: list[bool] = []

    def body() -> Iterator[bytes]:
        yield b"x" * piece
        streamed.append(_Echo.first_bytes.wait(5))
        for _ in range(size // piece - 1):
            yield b"x" * piece

    host = echoed.url.removeprefix("https://")
    with echoed.client() as client:
        r = client.post("/api/blobs/sha256:0", content=body(), timeout=30,
                        headers={"Authorization": "Bearer sk-test", "Content-Length": str(size)})
    assert r.status_code == 200, r.text
    got = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert r.json()["size"] == size and streamed == [True]
    assert got["authorization"] == "Bearer sk-test"
    assert got["host"] == host
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "https"
    assert got["x-forwarded-host"] == host
