"""The CLI as a user types it: run (one-shot, piped) and create; run's chat session is in
test_run_session.py."""

from __future__ import annotations

import httpx


def test_run_with_a_prompt(server, tmp_path):
    # `run` sends no options: a PARAMETER bounds the answer (SmolLM2 may otherwise ramble to the
    # end of its context) and shows that the model's Modelfile applies.
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM smollm2:135m\nPARAMETER num_predict 24\nPARAMETER temperature 0\n")
    server.cli("create", "smollm2-brief", "-f", str(mf))
    out = server.cli("run", "smollm2-brief", "Say", "this", "is", "a", "test").stdout
    assert out.strip()
    r = httpx.post(f"{server.url}/api/generate", json={"model": "smollm2-brief", "prompt": "Say this is a test",
                                                       "stream": False}, timeout=60).json()
    assert r["eval_count"] <= 24 and r["response"].strip() == out.strip()


def test_run_reads_a_piped_prompt(server):
    out = server.cli("run", "tiny", input="What is the capital of France?").stdout
    assert out.strip()


def test_run_unknown_model_is_a_clear_error(server):
    # `run` asks /api/show first and pulls what it doesn't find, as `ollama run` does (a registry
    # that has it or not: test_run_session); here no registry answers at the name's host.
    r = server.cli("run", "127.0.0.1:9/library/nosuch", "--insecure", "hi", check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("Error: pull model manifest: registry unreachable: http://127.0.0.1:9/v2/")


def test_create_from_an_existing_model_and_bad_modelfiles(server, tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM smollm2:135m\nSYSTEM You always answer in French.\nPARAMETER temperature 0.1\n")
    out = server.cli("create", "smollm2-fr", "-f", str(mf)).stdout
    assert out.strip().endswith("success")
    assert "smollm2-fr:latest" in server.cli("list").stdout
    mf.write_text("FROM smollm2:135m\nPARAMETER temperature warm\n")
    r = server.cli("create", "bad", "-f", str(mf), check=False)
    assert r.returncode == 1 and "temperature" in r.stderr
    mf.write_text(f"FROM {tmp_path / 'missing.gguf'}\n")
    r = server.cli("create", "bad", "-f", str(mf), check=False)
    assert r.returncode == 1 and "not found" in r.stderr
    assert "bad:latest" not in server.cli("list").stdout
