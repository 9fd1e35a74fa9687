"""/api/create's `requires`, `renderer`, `parser`, `info` and draft fields, as /api/show and
/api/tags give them back (the draft model's launch: test_ollama_fake_upstream)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import ollama
import pytest

from conftest import Server
from tinymodel import write_tiny_model


def _create(server: Server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/api/create", json={"stream": False, **body}, timeout=30)


def _show(server: Server, name: str) -> dict:
    r = httpx.post(f"{server.url}/api/show", json={"model": name}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _config(server: Server, name: str) -> dict:
    """The model's config blob, as the store holds it."""
    manifest_path = server.models / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    manifest = json.loads(manifest_path.read_text())
    return json.loads((server.models / "blobs" / manifest["config"]["digest"].replace(":", "-")).read_text())


@pytest.fixture(scope="module")
def tiny_files(server: Server, tiny_gguf: Path) -> dict[str, str]:
    return {"tiny.gguf": ollama.Client(server.url).create_blob(tiny_gguf)}


def test_requires_renderer_parser_and_info_are_stored_and_shown(server: Server, tiny_files: dict[str, str]):
    r = _create(server, {"model": "described", "files": tiny_files, "requires": "0.14.0", "renderer": "qwen3-coder",
                         "parser": "qwen3-coder", "info": {"model_family": "qwen3", "parameter_size": "30B",
                                                           "quantization_level": "Q4_K_M", "base_name": "Qwen3",
                                                           "unknown": 1}})
    assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
    shown = _show(server, "described")
    assert shown["requires"] == "0.14.0"
    # Ollama's /api/show leaves its renderer and parser fields empty: they show in the Modelfile.
    assert "renderer" not in shown and "parser" not in shown
    assert "\nRENDERER qwen3-coder\nPARSER qwen3-coder\n" in shown["modelfile"]
    assert shown["details"] | {"families": None} == {"parent_model": "", "format": "gguf", "family": "qwen3",
                                                       "families": None, "parameter_size": "30B",
                                                       "quantization_level": "Q4_K_M"}
    config = _config(server, "described")
    assert {k: config[k] for k in ("requires", "renderer", "parser", "base_name")} == {
        "requires": "0.14.0", "renderer": "qwen3-coder", "parser": "qwen3-coder", "base_name": "Qwen3"}
    listed = next(m for m in httpx.get(f"{server.url}/api/tags").json()["models"] if m["name"] == "described:latest")
    assert listed["details"]["family"] == "qwen3"
    # A model made FROM it keeps them unless the request names others, as Ollama's create does.
    assert _create(server, {"model": "derived", "from": "described", "parser": "harmony"}).status_code == 200
    derived = _show(server, "derived")
    assert derived["requires"] == "0.14.0"
    assert "RENDERER qwen3-coder\nPARSER harmony\n" in derived["modelfile"]
    # And a model created without them shows none.
    assert "requires" not in _show(server, "tiny") and "RENDERER" not in _show(server, "tiny")["modelfile"]


@pytest.mark.parametrize(("body", "message"), [
    ({"info": {"model_family": 3}}, 'info field "model_family" must be a string'),
    ({"info": {"capabilities": ["vision"]}}, "info field 'capabilities' is not supported"),
    ({"info": {"context_length": 131072}}, "info field 'context_length' is not supported"),
    ({"draft_quantize": "q8_0"}, "--draft-quantize requires a DRAFT model"),
    ({"draft_files": {"draft.gguf": "sha256:" + "0" * 64}}, "for draft.gguf not found"),
    ({"draft_files": {"../draft.gguf": "sha256:" + "0" * 64}}, "file path must be relative"),
])
def test_what_cannot_apply_is_refused(server: Server, tiny_files: dict[str, str], body: dict, message: str):
    r = _create(server, {"model": "refused", "files": tiny_files, **body})
    assert r.status_code == 400 and message in r.json()["error"], r.text
    assert "refused:latest" not in [m["name"] for m in httpx.get(f"{server.url}/api/tags").json()["models"]]



def test_cli_create_and_show(server: Server, tiny_gguf: Path):
    """`llamagate create` sends a Modelfile's RENDERER, PARSER and REQUIRES; `llamagate show`
    lists `requires` under Model, as `ollama show` does."""
    server.create("cli-described", tiny_gguf, "RENDERER qwen3-coder", "PARSER harmony", "REQUIRES v0.14.0")
    assert "\nRENDERER qwen3-coder\nPARSER harmony\n" in _show(server, "cli-described")["modelfile"]
    model = server.cli("show", "cli-described").stdout.split("\n\n")[0]
    assert model.splitlines()[-1].split() == ["requires", "0.14.0"]


def test_a_draft_layer_runs_speculative_decoding(server: Server, tiny_files: dict[str, str], tmp_path: Path):
    """The real llama-server starts with the draft layer as --model-draft and takes a request's
    draft_num_predict (a random-weight model drafting for another of the same vocabulary)."""
    client = ollama.Client(server.url)
    draft = {"draft.gguf": client.create_blob(write_tiny_model(tmp_path / "draft.gguf", padding=64))}
    r = _create(server, {"model": "drafted", "files": tiny_files, "draft_files": draft})
    assert r.json() == {"status": "success"}, r.text
    answer = client.generate(model="drafted", prompt="hi", options={"num_predict": 8, "draft_num_predict": 4,
                                                                   "temperature": 0})
    assert answer.done and answer.eval_count > 0
    blob = str(server.models / "blobs" / draft["draft.gguf"].replace(":", "-"))
    argvs = [Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") for pid in server.runner_pids()]
    assert any(a[a.index("--model-draft") + 1] == blob for a in argvs if "--model-draft" in a), argvs
    client.generate(model="drafted", keep_alive=0)  # unloaded: the shared server's other runners keep their room
