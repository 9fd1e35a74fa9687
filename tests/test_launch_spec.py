"""LaunchSpec → llama-server arguments, and the pooling an embedding runner gets from its GGUF."""

from __future__ import annotations

from pathlib import Path

import gguf

from supervisor.models.gguf import embedding_pooling
from supervisor.runners.runner import LaunchSpec


def _spec(**kw) -> LaunchSpec:
    return LaunchSpec(binary=Path("/bin/llama-server"), model_path=Path("/m.gguf"), num_ctx=512, threads=1,
                      parallel=2, **kw)


def test_completion_runner_has_no_embedding_flags():
    args = _spec().args()
    assert "--embeddings" not in args and "--pooling" not in args
    assert args[args.index("--ctx-size") + 1] == "1024"


def test_embedding_runner_flags():
    args = _spec(embedding=True, pooling="mean").args()
    assert "--embeddings" in args
    assert args[args.index("--pooling") + 1] == "mean"
    assert args[args.index("--ubatch-size") + 1] == "512"
    assert "--pooling" not in _spec(embedding=True).args()
    assert _spec(embedding=True) != _spec()


def _gguf(path: Path, pooling: int | None) -> Path:
    w = gguf.GGUFWriter(path, "bert" if pooling is not None else "llama")
    if pooling is not None:
        w.add_pooling_type(gguf.PoolingType(pooling))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_pooling_from_the_gguf(tmp_path, tiny_gguf):
    assert embedding_pooling(tiny_gguf) == "mean"  # a chat model: no pooling of its own
    assert embedding_pooling(_gguf(tmp_path / "cls.gguf", 2)) == ""  # keeps its own (CLS)
    assert embedding_pooling(_gguf(tmp_path / "none.gguf", 0)) == "mean"
