"""The model store: Ollama's layout, atomic writes, case-insensitive names, GGUF metadata."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import gguf
import pytest

from proxy.cli.modelfile import ModelfileError, parse
from supervisor.errors import LlamagateError
from supervisor.models.gguf import SkippedArray, human_number, read_gguf
from supervisor.names import ModelName
from supervisor.models.catalog import Catalog
from supervisor.models.remote import Upstreams
from supervisor.models.store import MODEL, PARAMS, SYSTEM, Store


def _import(store: Store, gguf_path: Path, name: str = "tiny", **layers) -> object:
    layer = store.add_blob_file(gguf_path, MODEL)
    return store.create(ModelName.parse(name), layer, **layers)


def test_layout_matches_ollama(tmp_path, tiny_gguf):
    store = Store(tmp_path)
    model = _import(store, tiny_gguf, "ns/tiny:v1", system="be terse", params={"temperature": 0.1, "stop": ["x"]})
    manifest_path = tmp_path / "manifests" / "registry.ollama.ai" / "ns" / "tiny" / "v1"
    manifest = json.loads(manifest_path.read_bytes())
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    types = [la["mediaType"] for la in manifest["layers"]]
    assert types == [MODEL, SYSTEM, PARAMS]
    for layer in [manifest["config"], *manifest["layers"]]:
        blob = tmp_path / "blobs" / ("sha256-" + layer["digest"].removeprefix("sha256:"))
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"].removeprefix("sha256:")
        assert blob.stat().st_size == layer["size"]
    assert model.digest == hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    assert model.system == "be terse" and model.params == {"temperature": 0.1, "stop": ["x"]}
    config = json.loads((tmp_path / "blobs" / ("sha256-" + manifest["config"]["digest"][7:])).read_bytes())
    assert config["model_format"] == "gguf" and config["model_family"] == "llama"
    # Nothing temporary is left behind.
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_lookup_is_case_insensitive(tmp_path, tiny_gguf):
    store = Store(tmp_path)
    _import(store, tiny_gguf, "Tiny:Latest")
    catalog = Catalog(store, Upstreams({}))
    assert catalog.require("TINY").name.display == "Tiny:Latest"
    with pytest.raises(LlamagateError) as e:
        catalog.require("other")
    assert e.value.status == 404 and e.value.message == "model 'other' not found"


def test_catalog_reads_a_manifest_once_and_again_after_a_change(tmp_path, tiny_gguf, monkeypatch):
    store = Store(tmp_path)
    _import(store, tiny_gguf, "tiny", system="one")
    catalog = Catalog(store, Upstreams({}))
    first = catalog.require("tiny")
    assert first.system == "one" and first.target.model.is_file()
    # Cached: a second lookup opens no file (a stat of the manifest says it is unchanged).
    opened = []
    real_read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(self) or real_read_bytes(self))
    assert catalog.require("TINY") is first and opened == []
    monkeypatch.undo()
    # Our own write is seen at once, whatever the file system's clock says.
    _import(store, tiny_gguf, "tiny", system="two")
    assert catalog.require("tiny").system == "two"
    # So is another process's rewrite of the manifest (a new inode), and a deletion.
    manifest = tmp_path / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    cached = catalog.require("tiny")
    other = Store(tmp_path)
    _import(other, tiny_gguf, "tiny", system="three")
    assert manifest.is_file() and catalog.require("tiny") is not cached
    assert catalog.require("tiny").system == "three"
    manifest.unlink()
    assert catalog.get(ModelName.parse("tiny")) is None


def test_manifest_needs_its_blobs(tmp_path, tiny_gguf):
    store = Store(tmp_path)
    model = _import(store, tiny_gguf)
    (tmp_path / "blobs" / f"sha256-{model.manifest.layers[0].digest[7:]}").unlink()
    with pytest.raises(LlamagateError, match="missing"):
        store.write_manifest(ModelName.parse("copy"), model.manifest)
    assert store.get(ModelName.parse("copy")) is None


def test_upload_checks_the_digest_and_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    data = b"hello world" * 1000

    async def chunks():
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    wrong = "sha256:" + "0" * 64
    with pytest.raises(LlamagateError) as e:
        asyncio.run(store.add_blob_stream(wrong, chunks()))
    assert e.value.status == 400 and "digest mismatch" in e.value.message
    assert list((tmp_path / "blobs").iterdir()) == []
    right = "sha256:" + hashlib.sha256(data).hexdigest()
    assert asyncio.run(store.add_blob_stream(right, chunks())) is True
    assert asyncio.run(store.add_blob_stream(right, chunks())) is False
    assert store.blob_path(right).read_bytes() == data


@pytest.mark.parametrize("digest", ["sha256:../../etc", "md5:" + "a" * 64, "sha256-" + "g" * 64, ""])
def test_bad_digests_are_400(tmp_path, digest):
    with pytest.raises(LlamagateError) as e:
        Store(tmp_path).blob_path(digest)
    assert e.value.status == 400


def test_gguf_reader_agrees_with_the_gguf_package(smollm2):
    ours = read_gguf(smollm2)
    theirs = gguf.GGUFReader(smollm2)
    assert ours.architecture == "llama"
    assert ours.context_length == 8192
    assert ours.file_type == "Q4_1"
    assert ours.parameter_count == sum(int(t.n_elements) for t in theirs.tensors)
    assert human_number(ours.parameter_count) == "134.52M"
    assert ours.metadata["llama.block_count"] == theirs.fields["llama.block_count"].contents()
    assert ours.metadata["tokenizer.ggml.tokens"] == SkippedArray(8, len(theirs.fields["tokenizer.ggml.tokens"].contents()))
    assert "im_start" in ours.chat_template


def test_not_gguf_is_400(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(LlamagateError) as e:
        read_gguf(bad)
    assert e.value.status == 400 and "GGUF" in e.value.message


@pytest.mark.parametrize(("n", "text"), [(134_515_008, "134.52M"), (3_200_000_000, "3.2B"), (7_000_000_000, "7B"), (500, "500"), (12_000, "12K")])
def test_human_number(n, text):
    assert human_number(n) == text


def test_modelfile():
    mf = parse('''# comment
FROM ./model.gguf
PARAMETER temperature 0.7
PARAMETER num_ctx 2048
PARAMETER stop "<|im_end|>"
PARAMETER stop "User:"
SYSTEM """You are
two lines."""
TEMPLATE {{ .Prompt }}
MESSAGE user hello
MESSAGE assistant hi there
LICENSE "MIT"
''')
    assert mf.from_ == "./model.gguf"
    assert mf.parameters == {"temperature": 0.7, "num_ctx": 2048, "stop": ["<|im_end|>", "User:"]}
    assert mf.system == "You are\ntwo lines."
    assert mf.template == "{{ .Prompt }}"
    assert mf.messages == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]
    assert mf.license == ["MIT"]


def test_modelfile_renderer_parser_requires():
    mf = parse("FROM x\nRENDERER qwen3-coder\nPARSER qwen3-coder\nREQUIRES v0.14.0-rc1")
    assert (mf.renderer, mf.parser, mf.requires) == ("qwen3-coder", "qwen3-coder", "0.14.0-rc1")
    assert parse("FROM x\nREQUIRES 1.2").requires == "1.2"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("PARAMETER temperature 1", "no FROM"),
        ("FROM x\nPARAMETER bogus 1", "unknown parameter"),
        ("FROM x\nPARAMETER num_ctx lots", "invalid PARAMETER"),
        ('FROM x\nSYSTEM """never closed', "unterminated"),
        ("FROM x\nMESSAGE robot hi", "MESSAGE role"),
        ("FROM x\nADAPTER ./lora.gguf", "unsupported command ADAPTER"),
        ("FROM x\nREQUIRES latest", "requires must be a valid semver"),
        ("FROM x\nREQUIRES 1.2-rc1", "requires must be a valid semver"),
    ],
)
def test_modelfile_errors(text, error):
    with pytest.raises(ModelfileError, match=error):
        parse(text)
