import gguf

from tinymodel import write_tiny_model


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_tiny_model_is_valid_gguf(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf", context_length=256)

    assert path.read_bytes()[:4] == b"GGUF"
    assert path.stat().st_size < 1_000_000
    reader = gguf.GGUFReader(path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.context_length") == 256
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert "<|im_start|>" in _field(reader, "tokenizer.chat_template")
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output_norm.weight", "output.weight"} <= names
    assert "blk.1.ffn_down.weight" in names


def test_tiny_model_is_deterministic(tmp_path):
    a = write_tiny_model(tmp_path / "a.gguf")
    b = write_tiny_model(tmp_path / "b.gguf")
    assert a.read_bytes() == b.read_bytes()
