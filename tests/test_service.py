"""llamagate under a service manager: systemd's notify protocol on a socket the test binds, SIGTERM
draining streams and cancelling loads, the request log line and JSON logs, and the unit file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, Server, free_port, llamagate_cmd, loader_pids, wait_until

from proxy.service.notify import Notifier


class Manager:
    """The service manager's end of NOTIFY_SOCKET: every datagram, with the time it came."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="notify", dir="/tmp"))  # short: sun_path has 108 bytes
        self.path = self.dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def saw(self, text: str, timeout: float = 10) -> bool:
        return wait_until(lambda: any(text in m for _, m in self.messages), timeout)

    def times(self, text: str) -> list[float]:
        return [t for t, m in self.messages if text in m.split("\n")]

    def close(self) -> None:
        self._closed = True
        self._thread.join()
        self.sock.close()
        shutil.rmtree(self.dir)


@pytest.fixture
def manager() -> Iterator[Manager]:
    m = Manager()
    yield m
    m.close()


def test_ready_once_listening_and_stopping_at_sigterm(tmp_path, manager):
    """READY=1 comes only once the port accepts connections: a connection made the moment it
    arrives succeeds. SIGTERM says STOPPING=1 and exits 0."""
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(tmp_path / "models"),
           "NOTIFY_SOCKET": str(manager.path)}
    env.pop("WATCHDOG_USEC", None)
    proc = subprocess.Popen([*llamagate_cmd(), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        connected: list[bool] = []

        def connect_at_ready() -> None:
            assert wait_until(lambda: manager.times("READY=1"), timeout=30, interval=0.001)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                connected.append(True)
            except OSError:
                connected.append(False)

        connect_at_ready()
        assert connected == [True]
        assert manager.saw("STATUS=idle", 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert manager.saw("STOPPING=1", 2)
        assert not manager.times("WATCHDOG=1")  # no WATCHDOG_USEC, no pings
    finally:
        proc.kill()
        proc.wait()


def test_status_watchdog_and_reload(tmp_path, manager, tiny_gguf, llama_server_binary):
    srv = Server(tmp_path, env={"NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": "400000"})
    try:
        assert manager.saw("READY=1")
        # Pings every half of WATCHDOG_USEC.
        time.sleep(2)
        pings = manager.times("WATCHDOG=1")
        gaps = sorted(b - a for a, b in zip(pings, pings[1:]))
        assert len(pings) >= 6, manager.messages
        assert 0.15 <= gaps[len(gaps) // 2] <= 0.3, gaps

        srv.create("tiny", tiny_gguf)
        r = httpx.post(f"{srv.url}/api/generate", json={"model": "tiny"}, timeout=60)
        assert r.status_code == 200, r.text
        assert manager.saw("STATUS=1 model loaded: tiny:latest", 5), manager.messages

        readies = len(manager.times("READY=1"))
        srv.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: len(manager.times("READY=1")) > readies, 5), manager.messages
        (reloading,) = [(t, m) for t, m in manager.messages if "RELOADING=1" in m]
        assert re.search(r"^MONOTONIC_USEC=\d+$", reloading[1], re.M), reloading
        assert reloading[0] <= manager.times("READY=1")[-1]
        assert srv.proc.poll() is None  # SIGHUP under a manager reloads; it never stops us

        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(30) == 0
        assert manager.saw("STOPPING=1", 2)
    finally:
        srv.stop()


STORY = "Once upon a time, in a land far away, there lived a dragon and a knight. Every day,"


def test_sigterm_lets_a_stream_finish_and_logs_it(tmp_path, smollm2, llama_server_binary):
    """A stream in flight at SIGTERM ends with done: true; no new connections are taken; the
    process exits 0 with no runner left. Its log line has the request's facts and id, not its key;
    llama-server's lines are in the INFO log while it loads, not once it serves."""
    srv = Server(tmp_path, env={"LLAMAGATE_API_KEYS": "sekrit-key-1234"})
    headers = {"Authorization": "Bearer sekrit-key-1234"}
    try:
        srv.env["LLAMAGATE_API_KEY"] = "sekrit-key-1234"
        srv.create("smollm2", smollm2)
        r = httpx.post(f"{srv.url}/api/generate", json={"model": "smollm2"}, headers=headers, timeout=120)
        assert r.status_code == 200, r.text
        first = threading.Event()

        def stream() -> tuple[str, list[dict]]:
            with httpx.stream("POST", f"{srv.url}/api/generate?key=sekrit-key-1234", headers=headers, timeout=120,
                              json={"model": "smollm2", "prompt": STORY, "raw": True,
                                    "options": {"num_predict": 60, "temperature": 0}}) as r:
                chunks = []
                for line in r.iter_lines():
                    chunks.append(json.loads(line))
                    first.set()
                return r.headers["x-request-id"], chunks

        with ThreadPoolExecutor(1) as pool:
            streaming = pool.submit(stream)
            assert first.wait(60)
            srv.proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: _refused(srv.port), 5)
            request_id, chunks = streaming.result()
        assert chunks[-1]["done"] is True and chunks[-1]["eval_count"] == 60, chunks[-1]
        assert srv.proc.wait(30) == 0
        assert srv.runner_pids() == []
        log = srv.log()
        assert "sekrit" not in log
        (line,) = [line for line in log.splitlines() if f"id={request_id}" in line]
        assert re.search(r"INFO llamagate.request: POST /api/generate 200 \d+\.\d{3}s model=smollm2:latest "
                         r"tokens=\d+/60 client=127.0.0.1 id=[0-9a-f]{32}$", line), line
        assert "load_model: loading model" in log  # while loading: INFO
        assert "print_timing" not in log and "launch_slot" not in log  # serving: DEBUG
    finally:
        srv.stop()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_during_a_load_cancels_it(loading):
    """A load never waits out the grace (30s): the shutdown cancels it, its request gets a 503,
    and the process exits 0 with the loader gone."""
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(lambda: httpx.post(f"{loading.url}/api/generate", json={"model": "tiny"}, timeout=60))
        assert wait_until(lambda: loader_pids(loading), 15)
        loaders = loader_pids(loading)
        time.sleep(0.5)
        stopped = time.monotonic()
        loading.proc.send_signal(signal.SIGTERM)
        assert loading.proc.wait(20) == 0
        assert time.monotonic() - stopped < 10, loading.log()[-3000:]
        r = waiting.result()
    assert r.status_code == 503 and "shutting down" in r.text, r.text
    assert not any(Path(f"/proc/{pid}").exists() for pid in loaders)
    assert "load cancelled: shutting down" in loading.log()


def test_json_log_and_debug(tmp_path, tiny_gguf, llama_server_binary):
    """--log-format json: every line one object with time, level, logger, message; the request
    line's facts are keys, the request id the one asked for. -v shows llama-server's serving
    lines, at debug."""
    srv = Server(tmp_path, "-v", "--log-format", "json")
    try:
        srv.create("tiny", tiny_gguf)
        r = httpx.post(f"{srv.url}/api/generate", headers={"X-Request-Id": "req-42"}, timeout=60,
                       json={"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 3}})
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
        refused = httpx.get(f"{srv.url}/api/tags", headers={"X-Request-Id": "bad id!"})
        assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])
    finally:
        srv.stop()
    lines = [json.loads(line) for line in srv.log().splitlines()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    (request,) = [line for line in lines if line.get("request_id") == "req-42"]
    assert request["level"] == "info" and request["logger"] == "llamagate.request"
    assert request | {"duration_s": 0} == request | {
        "method": "POST", "path": "/api/generate", "status": 200, "model": "tiny:latest", "generated_tokens": 3,
        "duration_s": 0}
    timings = [line for line in lines if "print_timing" in line["message"]]
    assert timings and all(line["level"] == "debug" for line in timings)


def test_the_unit_file_verifies(tmp_path):
    """systemd-analyze verify accepts the unit (with an ExecStart that exists here), and would
    say so if it had an error: it warns about, but does not fail on, unknown keys and values."""
    unit = (ROOT / "contrib" / "systemd" / "llamagate.service").read_text()
    assert re.search(r"^ExecStart=/usr/local/bin/llamagate serve$", unit, re.M)
    assert _verify(tmp_path, unit) == ""
    assert "Unknown key" in _verify(tmp_path, unit.replace("LockPersonality=yes", "LockPersonalty=yes"))
    assert "Failed to parse" in _verify(tmp_path, unit.replace("Type=notify", "Type=notifyy"))


def _verify(tmp: Path, unit: str) -> str:
    path = tmp / "llamagate.service"
    path.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", unit, flags=re.M))
    done = subprocess.run(["/usr/bin/systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if str(path) in line or done.returncode]
    return "\n".join(problems)


@pytest.mark.parametrize("how", ["grace ends", "second signal"])
def test_a_stream_longer_than_the_drain_is_cut(tmp_path, smollm2, llama_server_binary, how):
    """The grace (LLAMAGATE_DRAIN_TIMEOUT) ends the drain: the stream is cut and the exit is 0.
    A second SIGTERM ends it at once, killing the runners."""
    srv = Server(tmp_path, env={"LLAMAGATE_DRAIN_TIMEOUT": "1.5"})
    try:
        srv.create("smollm2", smollm2)
        first = threading.Event()

        def stream() -> None:
            with contextlib.suppress(httpx.HTTPError):
                with httpx.stream("POST", f"{srv.url}/api/generate", timeout=120, json={
                        "model": "smollm2", "prompt": STORY, "raw": True, "options": {"num_predict": 4000}}) as r:
                    for _ in r.iter_lines():
                        first.set()

        with ThreadPoolExecutor(1) as pool:
            pool.submit(stream)
            assert first.wait(60)
            srv.proc.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            if how == "second signal":
                time.sleep(0.5)
                assert srv.proc.poll() is None  # draining
                srv.proc.send_signal(signal.SIGTERM)
                assert srv.proc.wait(5) == 128 + signal.SIGTERM
                assert time.monotonic() - stopped < 2
            else:
                assert srv.proc.wait(15) == 0
                assert 1.5 <= time.monotonic() - stopped < 8
        assert wait_until(lambda: srv.runner_pids() == [], 3)
    finally:
        srv.stop()


def test_notifier_reads_the_environment_as_sd_notify_does():
    """An abstract socket ("@name"); a watchdog for another process (WATCHDOG_PID) is not ours."""
    name = f"llamagate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "30000000"})
        assert notifier.watchdog_interval == 15
        notifier.status("idle")
        notifier.status("idle")  # unchanged: not sent again
        notifier.ready()
        assert [sock.recv(100), sock.recv(100)] == [b"STATUS=idle", b"READY=1"]
    other = Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None
    assert not Notifier.from_env({}).enabled
    Notifier.from_env({}).ready()  # without a manager: nothing, no error
