"""LaunchSpec → llama-server arguments and environment, and the pooling an embedding runner gets
from its GGUF."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from supervisor.models.gguf import embedding_pooling
from supervisor.runners.launch import LaunchSpec, child_env


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


def test_a_rerankers_embedding_runner_reranks():
    args = _spec(embedding=True, pooling="rank").args()
    assert "--reranking" in args and "--embeddings" not in args and "--pooling" not in args
    assert args[args.index("--ubatch-size") + 1] == "512"


_BASE = ["/bin/llama-server", "--model", "/m.gguf", "--host", "127.0.0.1", "--port", "0", "--ctx-size", "1024",
         "--parallel", "2", "--threads", "1", "--jinja", "--no-webui", "--offline", "--log-colors", "off",
         "--log-verbosity", "4", "--metrics"]


@pytest.mark.parametrize(
    "options, after_base",
    [
        ({}, []),
        ({"projector": Path("/p.gguf")}, ["--mmproj", "/p.gguf"]),
        ({"adapters": (Path("/a.gguf"), Path("/b.gguf"))}, ["--lora", "/a.gguf", "--lora", "/b.gguf"]),
        # Load options, then embedding flags, then the projector and adapters.
        ({"gpu_layers": 0, "batch": 64, "rpc": ("w1:50052",), "embedding": True, "pooling": "cls",
          "adapters": (Path("/a.gguf"),)},
         ["--n-gpu-layers", "0", "--batch-size", "64", "--rpc", "w1:50052", "--embeddings", "--pooling", "cls",
          "--batch-size", "512", "--ubatch-size", "512", "--lora", "/a.gguf"]),
        # Ollama's use_mmap/use_mlock as llama-server's --load-mode (its --no-mmap and --mlock are gone).
        ({"use_mmap": False}, ["--load-mode", "none"]),
        ({"use_mlock": True}, ["--load-mode", "mmap+mlock"]),
        ({"use_mmap": False, "use_mlock": True, "main_gpu": 1}, ["--main-gpu", "1", "--load-mode", "mlock"]),
        ({"use_mmap": True, "use_mlock": False}, []),
        # The GPU the scheduler chose for it alone (OLLAMA_SCHED_SPREAD off, several GPUs).
        ({"device": "CUDA1"}, ["--device", "CUDA1"]),
        # Model tables: then their extra_args, last.
        ({"flash_attention": False, "cache_type_k": "f32", "cache_type_v": "bf16", "draft": Path("/d.gguf"),
          "draft_max": 8, "draft_min": 2, "extra_args": ("--no-warmup",)},
         ["--flash-attn", "off", "--cache-type-k", "f32", "--cache-type-v", "bf16", "--model-draft", "/d.gguf",
          "--spec-draft-n-max", "8", "--spec-draft-n-min", "2", "--no-warmup"]),
    ],
)
def test_whole_command_line(options, after_base):
    assert _spec(**options).args() == _BASE + after_base


def test_the_chosen_gpu_is_no_other_process():
    """A runner started on CUDA1 serves requests whose spec chose no GPU yet: the choice is the
    scheduler's, made at each load, not the request's."""
    assert _spec(device="CUDA1") == _spec()


def test_child_env_drops_llama_variables_and_carries_the_key(monkeypatch):
    monkeypatch.setenv("LLAMA_ARG_CTX_SIZE", "8")
    monkeypatch.setenv("LLAMA_API_KEY", "theirs")
    monkeypatch.setenv("KEEP_ME", "1")
    env = child_env("ours")
    assert env["LLAMA_API_KEY"] == "ours" and env["KEEP_ME"] == "1" and "LLAMA_ARG_CTX_SIZE" not in env


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
    assert embedding_pooling(_gguf(tmp_path / "rank.gguf", 4)) == "rank"  # a reranker
