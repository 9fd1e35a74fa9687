"""Tables for the pure parts of scheduling: memory estimates and fit, crash backoff, launch flags,
sizes and NAME=VALUE settings, the config file, and picking an upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import Config, SettingError, parse_pairs, parse_size
from supervisor.errors import LlamagateError
from supervisor.runners.memory import Estimate, estimate, fits, kv_cache_bytes
from supervisor.runners.launch import LaunchSpec
from supervisor.runners.runner import _backoff
from supervisor.models.remote import Pool

MB = 1 << 20


@pytest.mark.parametrize(
    "metadata, n_ctx, expected",
    [
        # SmolLM2-135M's shape: 30 layers, 3 KV heads of 64: 2048 tokens → 45 MiB (llama.cpp logs 45.00 MiB).
        ({"general.architecture": "llama", "llama.block_count": 30, "llama.attention.head_count": 9,
          "llama.attention.head_count_kv": 3, "llama.embedding_length": 576}, 2048, 45 * MB),
        # Explicit key/value lengths win over embedding / heads.
        ({"general.architecture": "x", "x.block_count": 2, "x.attention.head_count": 4,
          "x.attention.head_count_kv": 2, "x.embedding_length": 64, "x.attention.key_length": 32,
          "x.attention.value_length": 16}, 100, 100 * 2 * 2 * (32 + 16) * 2),
        # Per-layer head counts: the largest bounds the cache.
        ({"general.architecture": "y", "y.block_count": 3, "y.attention.head_count": [4, 8, 8],
          "y.attention.head_count_kv": [0, 2, 4], "y.embedding_length": 64}, 10, 10 * 3 * 4 * (8 + 8) * 2),
        ({}, 4096, 0),  # nothing known: no KV estimate rather than a guess
    ],
)
def test_kv_cache_bytes(metadata, n_ctx, expected):
    assert kv_cache_bytes(metadata, n_ctx) == expected


def test_estimate_reads_the_file_and_scales_with_context(tiny_gguf: Path):
    small, large = estimate(tiny_gguf, 256), estimate(tiny_gguf, 512)
    assert small.weights == large.weights == tiny_gguf.stat().st_size
    # tiny: 2 layers, 4 KV heads of 16 → 512 bytes per token.
    assert large.kv_and_buffers - small.kv_and_buffers == 256 * 2 * 4 * 32 * 2
    assert estimate(tiny_gguf.parent / "missing.gguf", 512) == Estimate(0, 256 * MB)


E = Estimate


@pytest.mark.parametrize(
    "need, loaded, starting, available, budget, expected",
    [
        (E(100, 50), [], [], 1000, 0, True),
        (E(100, 50), [], [], 149, 0, False),
        # A loaded runner's weights are page cache the kernel calls available: taken off.
        (E(100, 50), [E(800, 10)], [], 1000, 0, True),
        (E(100, 50), [E(900, 10)], [], 1000, 0, False),
        # A starting runner has not allocated yet: all of it is taken off.
        (E(100, 50), [], [E(800, 100)], 1000, 0, False),
        # Unknown free memory: only the budget decides.
        (E(100, 50), [E(10**9, 0)], [], None, 0, True),
        (E(100, 50), [E(100, 50)], [], None, 299, False),
        (E(100, 50), [E(100, 50)], [], None, 300, True),
        # Both limits apply.
        (E(100, 50), [], [], 100, 10**9, False),
    ],
)
def test_fits(need, loaded, starting, available, budget, expected):
    assert fits(need, loaded=loaded, starting=starting, available=available, budget=budget) is expected


def test_backoff_first_retry_is_immediate_then_doubles_to_a_cap():
    assert [_backoff(n) for n in range(0, 9)] == [0, 0, 1, 2, 4, 8, 16, 30, 30]


def _spec(**kw) -> LaunchSpec:
    return LaunchSpec(binary=Path("/bin/llama-server"), model_path=Path("/m.gguf"), num_ctx=512, threads=1,
                      parallel=2, **kw)


def test_launch_flags_for_load_options():
    args = _spec().args()
    assert args[args.index("--ctx-size") + 1] == "1024" and args[args.index("--parallel") + 1] == "2"
    assert "--n-gpu-layers" not in args and "--batch-size" not in args and "--rpc" not in args
    args = _spec(gpu_layers=0, batch=64, rpc=("10.0.0.2:50052", "10.0.0.3:50052")).args()
    assert args[args.index("--n-gpu-layers") + 1] == "0"
    assert args[args.index("--batch-size") + 1] == "64"
    assert args[args.index("--rpc") + 1] == "10.0.0.2:50052,10.0.0.3:50052"
    # An embedding runner's batch (a whole input per batch) wins over num_batch: it comes last.
    args = _spec(batch=64, embedding=True).args()
    assert args[len(args) - 1 - args[::-1].index("--batch-size") + 1] == "512"
    # Any of them changing is another process.
    assert _spec(batch=64) != _spec() and _spec(gpu_layers=1) != _spec(gpu_layers=2)


@pytest.mark.parametrize(
    "text, expected",
    [("0", 0), ("1024", 1024), ("8GB", 8 * 10**9), ("1.5 GiB", 3 * 2**29), ("512mib", 512 * MB), ("2kb", 2000)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "8 GBs", "-1GB", "1e9"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_pairs():
    assert parse_pairs(["a=http://x:1", "b=h:1,h:2", "a=http://y:2"], "--upstream") == {
        "a": ["http://x:1", "http://y:2"], "b": ["h:1", "h:2"]}
    for bad in (["noequals"], ["=http://x"], ["a="]):
        with pytest.raises(ValueError, match="--upstream"):
            parse_pairs(bad, "--upstream")


def test_config_file_and_flags(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text('[upstreams]\n"big:70b" = ["http://a:8080", "http://b:8080"]\nsmall = "http://c:8080"\n'
                    '[rpc]\n"huge" = "w1:50052,w2:50052"\n')
    cfg = Config.load(path)
    assert cfg.upstreams == {"big:70b": ["http://a:8080", "http://b:8080"], "small": ["http://c:8080"]}
    assert cfg.rpc == {"huge": ["w1:50052", "w2:50052"]}
    monkeypatch.setenv("LLAMAGATE_CONFIG", str(path))
    cfg = Config.load(upstream=("small=http://d:1",))
    assert cfg.upstreams == {"big:70b": ["http://a:8080", "http://b:8080"], "small": ["http://d:1"]}
    assert cfg.rpc == {"huge": ["w1:50052", "w2:50052"]}
    path.write_text("[upstreams]\nx = 3\n")
    with pytest.raises(SettingError, match="upstreams.\"x\""):
        Config.load()


def test_scheduling_environment(monkeypatch):
    for key, value in {"OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_MAX_QUEUE": "7", "OLLAMA_NUM_PARALLEL": "2",
                       "LLAMAGATE_MAX_MEMORY": "2GB", "LLAMAGATE_HANG_TIMEOUT": "30s"}.items():
        monkeypatch.setenv(key, value)
    cfg = Config.load()
    assert (cfg.max_loaded_models, cfg.max_queue, cfg.num_parallel, cfg.max_memory, cfg.hang_timeout) == (
        1, 7, 2, 2 * 10**9, 30.0)
    monkeypatch.setenv("OLLAMA_MAX_LOADED_MODELS", "0")  # 3 per GPU, resolved by the scheduler (test_gpus.py)
    assert Config.load().max_loaded_models == 0


def test_pool_picks_fewest_in_flight_then_fewest_served_and_skips_failed():
    pool = Pool.of("m:latest", ["http://a", "http://b", "http://c"])
    a, b, c = pool.endpoints
    a.active, b.active, c.active = 2, 0, 1
    assert pool.pick() is b
    b.mark_down("refused")
    assert pool.pick() is c
    c.active, a.active, a.served, c.served = 0, 0, 5, 3
    assert pool.pick() is c
    a.mark_down("refused")
    c.mark_down("timeout")
    with pytest.raises(LlamagateError) as e:
        pool.pick()
    assert e.value.status == 503 and "http://b: refused" in e.value.message and "http://c: timeout" in e.value.message


def test_remote_model_details_from_props_and_models(tmp_path):
    import msgspec

    from supervisor.models.catalog import Catalog
    from supervisor.models.remote import Upstreams, _Meta, _Props
    from supervisor.models.store import Store
    from supervisor.names import ModelName

    catalog = Catalog(Store(tmp_path), Upstreams({"m": ["http://a"]}))
    name = ModelName.parse("m")
    model = catalog.get(name)
    assert model.details.file_type == "" and model.size == 0 and model.capabilities == ["completion"]
    # An older build: no model_ftype, so the file name tells the quantization. The catalog builds
    # an upstream's Model anew each time, so what a probe read since shows at once.
    pool = catalog.upstreams.get(name)
    pool.props = msgspec.convert({"model_path": "/models/Qwen3-8B-q4_k_m.gguf", "chat_template": "{{ tools }}"}, _Props)
    pool.meta = _Meta(n_params=8_190_000_000, n_ctx_train=40960, size=5_000_000_000)
    model = catalog.get(name)
    c = model.details
    assert (c.file_type, c.model_type, c.context_length, model.size) == ("Q4_K_M", "8.2B", 40960, 5_000_000_000)
    assert model.capabilities == ["completion", "tools"]
    pool.props = msgspec.convert({"model_path": "/m/x.gguf", "model_ftype": "Q8_0"}, _Props)
    assert catalog.get(name).details.file_type == "Q8_0"
    # What changes the store has no file to work on: a 400 naming the servers.
    with pytest.raises(LlamagateError) as e:
        catalog.stored(name)
    assert e.value.status == 400 and "http://a" in e.value.message