"""Test servers are hermetic: a developer's own config file, runtime cache, ~/.ollama store and
OLLAMA_*/LLAMAGATE_* variables can't change what a test runs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
from conftest import Server


def test_the_developers_home_and_settings_stay_out(tmp_path, monkeypatch: pytest.MonkeyPatch, tiny_gguf) -> None:
    dev = tmp_path / "developer"
    config = dev / ".config" / "llamagate" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('keep_alive = "1h"\n[upstreams]\nleaked = "http://127.0.0.1:9"\n')
    # A downloaded build in the developer's cache would win the llama-server search.
    stale = dev / ".cache" / "llamagate" / "runtime" / "current" / "llama-server"
    stale.parent.mkdir(parents=True)
    stale.write_text("#!/bin/sh\nexit 1\n")
    stale.chmod(0o755)
    (dev / ".ollama" / "models").mkdir(parents=True)
    for var, value in (("HOME", dev), ("XDG_CONFIG_HOME", dev / ".config"), ("XDG_CACHE_HOME", dev / ".cache")):
        monkeypatch.setenv(var, str(value))
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "7")
    monkeypatch.setenv("LLAMAGATE_API_KEYS", "developer-key")

    (tmp_path / "test").mkdir()
    srv = Server(tmp_path / "test")
    try:
        srv.create("tiny", tiny_gguf)
        assert [m["name"] for m in httpx.get(f"{srv.url}/api/tags").json()["models"]] == ["tiny:latest"]
        r = httpx.post(f"{srv.url}/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False,
                                                         "options": {"num_predict": 1}}, timeout=60)
        assert r.status_code == 200, r.text
        (loaded,) = httpx.get(f"{srv.url}/api/ps").json()["models"]
        # The default keep_alive (5m), not the developer's hour.
        left = datetime.fromisoformat(loaded["expires_at"]) - datetime.now(timezone.utc)
        assert timedelta(minutes=4) < left <= timedelta(minutes=5), loaded
        log = srv.log()
        assert str(dev) not in log and "--parallel 1 " in log, log[-3000:]
        assert str(srv.models) in log
    finally:
        srv.stop()
