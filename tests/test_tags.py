"""/api/tags as Ollama 0.30 lists models: `capabilities`, `details.context_length` and
`details.embedding_length`, from the store's GGUFs and from an `--upstream` llama-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, free_port, wait_until
from test_ollama_more import TOOLS_TEMPLATE
from test_upstreams import LlamaServer
from tinymodel import N_EMBD, write_tiny_model

from supervisor.models.catalog import Catalog
from supervisor.models.remote import Upstreams
from supervisor.models.store import CONFIG_TYPE, MODEL, Manifest, Store
from supervisor.names import ModelName


@pytest.fixture(scope="module")
def store_server(tmp_path_factory: pytest.TempPathFactory, smollm2: Path, tiny_gguf: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tags")
    srv = Server(tmp)
    try:
        srv.create("smollm2:135m", smollm2)
        srv.create("tiny", tiny_gguf)
        srv.create("tools", write_tiny_model(tmp / "tools.gguf", context_length=2048, chat_template=TOOLS_TEMPLATE))
        yield srv
    finally:
        srv.stop()


def _listed(srv: Server) -> dict[str, dict]:
    return {m["name"]: m for m in httpx.get(f"{srv.url}/api/tags").json()["models"]}


def test_tags_list_capabilities_and_lengths_of_stored_models(store_server: Server) -> None:
    models = _listed(store_server)
    smol, tiny, tools = models["smollm2:135m"], models["tiny:latest"], models["tools:latest"]
    assert smol["capabilities"] == ["completion"]  # SmolLM2's template has no tools
    assert smol["details"]["context_length"] == 8192 and smol["details"]["embedding_length"] == 576
    assert tiny["details"]["context_length"] == 512 and tiny["details"]["embedding_length"] == N_EMBD
    assert tools["capabilities"] == ["completion", "tools"]
    assert tools["details"]["context_length"] == 2048
    # The same names /api/show gives.
    shown = httpx.post(f"{store_server.url}/api/show", json={"model": "tools"}).json()
    assert shown["capabilities"] == tools["capabilities"]
    # /api/show and /api/ps carry no lengths in `details`, as in Ollama (show has model_info).
    assert "context_length" not in shown["details"] and "embedding_length" not in shown["details"]


def test_an_older_config_blob_falls_back_to_the_gguf(tmp_path: Path, tiny_gguf: Path) -> None:
    """A model written by an Ollama before 0.30 has no lengths in its config: the GGUF says them,
    as Ollama's listing reads them from the header."""
    store = Store(tmp_path)
    layer = store.add_blob_file(tiny_gguf, MODEL)
    old_config = store.add_blob_bytes(b'{"model_format":"gguf","model_family":"llama"}', CONFIG_TYPE)
    store.write_manifest(ModelName.parse("old"), Manifest(config=old_config, layers=[layer]))
    [model] = Catalog(store, Upstreams({})).list()
    assert model.details.context_length == 0
    assert model.context_length == 512 and model.embedding_length == N_EMBD


def test_listing_reuses_resolved_models(tmp_path: Path, tiny_gguf: Path) -> None:
    """Each listing reads no GGUF header again: a big store stays cheap to list."""
    store = Store(tmp_path)
    store.create(ModelName.parse("tiny"), store.add_blob_file(tiny_gguf, MODEL))
    catalog = Catalog(store, Upstreams({}))
    [first] = catalog.list()
    assert first.capabilities == ["completion"]
    [again] = catalog.list()
    assert again is first and catalog.require("tiny") is first
    store.create(ModelName.parse("tiny"), store.add_blob_file(tiny_gguf, MODEL), system="changed")
    [changed] = catalog.list()
    assert changed is not first and changed.system == "changed"


@pytest.fixture(scope="module")
def upstream_gate(tmp_path_factory: pytest.TempPathFactory, smollm2: Path, llama_server_binary: Path) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("tags-upstream")
    upstream = LlamaServer(llama_server_binary, smollm2, free_port(), folder / "upstream.log")
    gone = f"http://127.0.0.1:{free_port()}"
    srv = Server(folder, "--upstream", f"smol={upstream.url}", "--upstream", f"gone={gone}")
    try:
        yield srv
    finally:
        srv.stop()
        upstream.kill()


def test_tags_of_upstream_models_come_from_props(upstream_gate: Server) -> None:
    def smol() -> dict | None:
        m = _listed(upstream_gate)["smol:latest"]
        return m if m["details"].get("embedding_length") else None

    assert wait_until(smol, timeout=15)
    m = smol()
    assert m["details"]["context_length"] == 8192  # n_ctx_train, not the server's -c 2048
    assert m["details"]["embedding_length"] == 576
    assert m["capabilities"] == ["completion"]
    # A server never reached tells no lengths: they are left out, as Ollama leaves out zeros.
    gone = _listed(upstream_gate)["gone:latest"]
    assert "context_length" not in gone["details"] and "embedding_length" not in gone["details"]


def test_a_model_whose_blob_is_no_gguf_is_listed_without_its_details(tmp_path: Path, tiny_gguf: Path) -> None:
    """One broken model must not take the whole list down: it is listed from its manifest and
    config, without what only its GGUF could tell."""
    store = Store(tmp_path)
    good = store.add_blob_file(tiny_gguf, MODEL)
    bad = store.add_blob_bytes(b"not a gguf at all", MODEL)
    config = store.add_blob_bytes(b'{"model_format":"gguf","model_family":"llama"}', CONFIG_TYPE)
    store.write_manifest(ModelName.parse("good"), Manifest(config=config, layers=[good]))
    store.write_manifest(ModelName.parse("broken"), Manifest(config=config, layers=[bad]))
    from proxy.ollama.models import _listed

    listed = {m.name: m for m in map(_listed, Catalog(store, Upstreams({})).list())}
    assert listed["broken:latest"].capabilities is None and listed["broken:latest"].details.context_length == 0
    assert listed["good:latest"].capabilities == ["completion"] and listed["good:latest"].details.context_length
