"""Settings: precedence and sources (`llamagate config`), one-line errors for bad values, model
tables and Ollama's load knobs on a real llama-server's command line, preload, SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from conftest import Server, llamagate_cmd, wait_until

# Every variable a setting reads, so that the developer's own environment can't leak in.
_OURS = ("OLLAMA_", "LLAMAGATE_")


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    # The default config file lives under XDG_CONFIG_HOME: never the developer's real one.
    return {**env, "XDG_CONFIG_HOME": str(tmp / "xdg"), "OLLAMA_MODELS": str(tmp / "models"), **extra}


def _cli(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*llamagate_cmd(), *args], env=_env(tmp, **env), capture_output=True, text=True,
                          timeout=60)


def _settings(out: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in out.splitlines():
        name, _, rest = line.partition(" = ")
        value, _, source = rest.rpartition("  (")
        rows[name] = (value, source.removesuffix(")"))
    return rows


def test_precedence_default_file_environment_flag(tmp_path: Path) -> None:
    default_file = tmp_path / "xdg" / "llamagate" / "config.toml"
    default_file.parent.mkdir(parents=True)
    default_file.write_text('threads = 2\nkeep_alive = "10m"\nnum_parallel = 3\nflash_attention = true\n'
                            '[upstreams]\nsmall = "http://127.0.0.1:9"\n'
                            '[models.tiny]\nnum_parallel = 2\nkeep_alive = "90s"\n')
    r = _cli(tmp_path, "config", "--threads", "4", OLLAMA_KEEP_ALIVE="1h", LLAMAGATE_THREADS="3")
    assert r.returncode == 0, r.stderr
    rows = _settings(r.stdout)
    path = str(default_file)
    assert rows["config_file"] == (path, "default")
    assert rows["threads"] == ("4", "--threads")  # flag > environment > file
    assert rows["keep_alive"] == ("1h", "OLLAMA_KEEP_ALIVE")  # environment > file
    assert rows["num_parallel"] == ("3", path)  # file > default
    assert rows["flash_attention"] == ("true", path)
    assert rows["max_queue"] == ("512", "default")
    assert rows["upstreams.small"] == ("http://127.0.0.1:9", path)
    assert rows['models."tiny:latest".num_parallel'] == ("2", path)
    assert rows['models."tiny:latest".keep_alive'] == ("90s", path)
    # An explicit file replaces the default one; --json says the same for machines.
    other = tmp_path / "other.toml"
    other.write_text("max_queue = 7\n")
    r = _cli(tmp_path, "config", "--json", LLAMAGATE_CONFIG=str(other), LLAMAGATE_API_KEYS="a,b")
    settings = json.loads(r.stdout)
    assert settings["config_file"] == {"value": str(other), "source": "LLAMAGATE_CONFIG"}
    assert settings["max_queue"] == {"value": "7", "source": str(other)}
    assert settings["threads"]["source"] == "default" and "upstreams.small" not in settings
    assert settings["api_keys"] == {"value": "(2 keys)", "source": "LLAMAGATE_API_KEYS"}  # never the keys


_BAD = [
    ({"OLLAMA_KEEP_ALIVE": "5 minutes"}, None, (),
     'OLLAMA_KEEP_ALIVE="5 minutes" (environment): not a duration; expected e.g. 5m, 1h30m, -1 or a number of seconds'),
    ({"OLLAMA_HOST": ":70000"}, None, (),
     'OLLAMA_HOST=":70000" (environment): port out of range; expected host, host:port, :port, [v6]:port or '
     "http(s)://host[:port], port 0-65535"),
    ({"OLLAMA_NUM_PARALLEL": "two"}, None, (),
     'OLLAMA_NUM_PARALLEL="two" (environment): not a whole number; expected a whole number ≥ 0'),
    ({"OLLAMA_MAX_QUEUE": "0"}, None, (),
     'OLLAMA_MAX_QUEUE="0" (environment): out of range; expected a whole number ≥ 1'),
    ({"LLAMAGATE_OPENAI_SEED_GREEDY": "yes"}, None, (),
     'LLAMAGATE_OPENAI_SEED_GREEDY="yes" (environment): not a boolean; expected 1, t, true, 0, f or false'),
    ({"OLLAMA_FLASH_ATTENTION": "maybe"}, None, (),
     'OLLAMA_FLASH_ATTENTION="maybe" (environment): not a boolean; expected 1, t, true, 0, f or false'),
    ({"OLLAMA_KV_CACHE_TYPE": "q5_1"}, None, (),
     'OLLAMA_KV_CACHE_TYPE="q5_1" (environment): not a KV cache type; expected f16, q8_0, q4_0'),
    ({"LLAMAGATE_MAX_MEMORY": "lots"}, None, (),
     'LLAMAGATE_MAX_MEMORY="lots" (environment): not a size; expected e.g. 8GB, 512MiB or a number of bytes'),
    ({"LLAMAGATE_HANG_TIMEOUT": "soon"}, None, (),
     'LLAMAGATE_HANG_TIMEOUT="soon" (environment): not a duration; expected e.g. 5m, 1h30m, -1 or a number of '
     "seconds"),
    ({}, None, ("--threads", "0"), '--threads="0" (--threads): out of range; expected a whole number ≥ 1'),
    ({}, 'keep_alive = "5 minutes"\n', (),
     'keep_alive="5 minutes" (CONFIG): not a duration; expected e.g. 5m, 1h30m, -1 or a number of seconds'),
    ({}, "threads = {n = 1}\n", (),
     'threads={"n": 1} (CONFIG): wrong type; expected a string, number or boolean'),
    ({}, 'colour = "red"\n', (), "colour (CONFIG): unknown setting; expected one of host, models_dir, "),
    ({}, "[modles.tiny]\nnum_ctx = 1\n", (), "modles (CONFIG): unknown setting; expected one of host, "),
    ({}, "threads = \n", (), "CONFIG: not TOML: "),
    ({}, "[upstreams]\nx = 3\n", (),
     'upstreams."x"=3 (CONFIG): wrong type; expected a string or a list of strings'),
    ({}, "[models.tiny]\nparallel = 2\n", (),
     'models."tiny".parallel (CONFIG): unknown key; expected one of num_parallel, keep_alive, num_ctx, preload, '
     "threads, gpu_layers, flash_attention, cache_type_k, cache_type_v, draft_model, draft_max, draft_min, "
     "extra_args"),
    ({}, "[models.tiny]\nnum_parallel = 0\n", (),
     'models."tiny".num_parallel=0 (CONFIG): out of range; expected a whole number ≥ 1'),
    ({}, '[models.tiny]\nnum_parallel = "2"\n', (),
     'models."tiny".num_parallel="2" (CONFIG): not a whole number; expected a whole number ≥ 1'),
    ({}, '[models.tiny]\nkeep_alive = "later"\n', (),
     'models."tiny".keep_alive="later" (CONFIG): not a duration; expected e.g. 5m, 1h30m, -1 or a number of '
     "seconds"),
    ({}, '[models.tiny]\ncache_type_k = "q3"\n', (),
     'models."tiny".cache_type_k="q3" (CONFIG): not a KV cache type; expected one of f32, f16, bf16, q8_0, '
     "q4_0, q4_1, iq4_nl, q5_0, q5_1"),
    ({}, '[models.tiny]\ndraft_model = "/nowhere/draft.gguf"\n', (),
     'models."tiny".draft_model="/nowhere/draft.gguf" (CONFIG): no such file; expected a model name or the '
     "path of a .gguf file"),
    ({}, '[models.tiny]\nextra_args = ["--port", "1"]\n', (),
     'models."tiny".extra_args=["--port", "1"] (CONFIG): --port is not allowed; expected a list of llama-server '
     "arguments from: --load-mode, "),
    ({}, '[models.tiny]\nextra_args = ["--batch-size"]\n', (),
     'models."tiny".extra_args=["--batch-size"] (CONFIG): --batch-size needs a value; expected '),
    ({}, '[models."bad name!"]\nnum_ctx = 1\n', (), 'models."bad name!" (CONFIG): not a model name: '),
]


@pytest.mark.parametrize("command", ["serve", "config"])
@pytest.mark.parametrize("env, file, args, message", _BAD, ids=[m.split(" ", 1)[0][:40] for *_, m in _BAD])
def test_a_bad_value_stops_with_one_line(tmp_path: Path, command, env, file, args, message) -> None:
    config = tmp_path / "config.toml"
    if file is not None:
        config.write_text(file)
        env = {**env, "LLAMAGATE_CONFIG": str(config)}
    r = _cli(tmp_path, command, *args, **env)
    expected = "llamagate: " + message.replace("CONFIG", str(config))
    assert r.returncode == 1, r.stdout
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    # Messages that list every accepted key are checked up to the list.
    assert r.stderr.strip() == expected if not message.endswith(" ") else r.stderr.startswith(expected), r.stderr


def test_a_missing_config_file_is_one_line(tmp_path: Path) -> None:
    r = _cli(tmp_path, "serve", "--config", str(tmp_path / "none.toml"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    missing = tmp_path / "none.toml"
    assert r.stderr.strip() == f"llamagate: {missing}: cannot read the config file: No such file or directory"


# Against a real llama-server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, smollm2: Path,
          llama_server_binary: Path) -> Path:
    """A model store with tiny:latest and smollm2:135m, shared by the servers below."""
    tmp = tmp_path_factory.mktemp("store")
    srv = Server(tmp, env=_env(tmp))
    try:
        srv.create("tiny", tiny_gguf)
        srv.create("smollm2:135m", smollm2)
    finally:
        srv.stop()
    return tmp / "models"


@pytest.fixture
def serve(tmp_path: Path, store: Path) -> Iterator:
    """Start `llamagate serve` over the shared store with a config file and environment."""
    servers = []

    def start(config: str, **env: str) -> Server:
        path = tmp_path / "config.toml"
        path.write_text(config)
        srv = Server(tmp_path, env=_env(tmp_path, OLLAMA_MODELS=str(store), LLAMAGATE_CONFIG=str(path),
                                        LLAMAGATE_THREADS="1", **env))
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def _generate(srv: Server, model: str = "tiny", **options) -> None:
    r = httpx.post(f"{srv.url}/api/generate", json={"model": model, "prompt": "hi", "stream": False,
                                                    "options": {"num_predict": 1, **options}}, timeout=120)
    assert r.status_code == 200, r.text


def _runners(srv: Server) -> dict[int, list[str]]:
    """The llama-servers this server started: pid → command line."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or (proc / "stat").read_text().rsplit(")", 1)[1].split()[1] != str(srv.proc.pid):
                continue
            args = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if args and args[0].endswith("llama-server"):
            found[int(proc.name)] = args
    return found


def _value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def test_a_model_table_reaches_the_command_line(serve) -> None:
    srv = serve('[models.tiny]\nnum_parallel = 2\nflash_attention = false\ncache_type_k = "f32"\n'
                'cache_type_v = "f16"\ndraft_model = "tiny"\ndraft_max = 2\ngpu_layers = 0\nthreads = 1\n'
                'keep_alive = "7m"\nextra_args = ["--no-warmup", "--batch-size", "32"]\n')
    _generate(srv)
    (args,) = _runners(srv).values()
    assert _value(args, "--parallel") == "2"
    assert _value(args, "--flash-attn") == "off"
    assert (_value(args, "--cache-type-k"), _value(args, "--cache-type-v")) == ("f32", "f16")
    # tiny as its own draft: llama-server accepts it, and the name resolves to the same blob.
    assert _value(args, "--model-draft") == _value(args, "--model")
    assert _value(args, "--spec-draft-n-max") == "2"
    assert _value(args, "--n-gpu-layers") == "0"
    assert args[-3:] == ["--no-warmup", "--batch-size", "32"]
    (ps,) = httpx.get(f"{srv.url}/api/ps").json()["models"]
    left = datetime.fromisoformat(ps["expires_at"]).timestamp() - datetime.now().timestamp()
    assert 6 * 60 < left <= 7 * 60  # the table's keep_alive, not OLLAMA_KEEP_ALIVE's 5m


def test_ollama_flash_attention_and_kv_cache_type(serve) -> None:
    """Ollama's rule: a quantized OLLAMA_KV_CACHE_TYPE applies to K and V, and only with flash
    attention on. tiny (flash attention off by the environment) gets no cache type; smollm2's
    table turns flash attention on, so it gets q8_0 for both."""
    srv = serve('[models."smollm2:135m"]\nflash_attention = true\n',
                OLLAMA_FLASH_ATTENTION="0", OLLAMA_KV_CACHE_TYPE="q8_0")
    _generate(srv)
    (tiny,) = _runners(srv).values()
    assert _value(tiny, "--flash-attn") == "off" and "--cache-type-k" not in tiny and "--cache-type-v" not in tiny
    _generate(srv, "smollm2:135m")
    (smol,) = [a for a in _runners(srv).values() if a != tiny]
    assert _value(smol, "--flash-attn") == "on"
    assert (_value(smol, "--cache-type-k"), _value(smol, "--cache-type-v")) == ("q8_0", "q8_0")


def test_request_load_options_reach_the_command_line_and_restart(serve) -> None:
    srv = serve("")
    _generate(srv, use_mmap=False, use_mlock=True, main_gpu=0)
    ((pid, args),) = _runners(srv).items()
    assert _value(args, "--load-mode") == "mlock" and _value(args, "--main-gpu") == "0"
    _generate(srv)  # other load options: a new process
    ((again, args),) = _runners(srv).items()
    assert again != pid and "--load-mode" not in args and "--main-gpu" not in args
    _generate(srv, use_mmap=False)
    ((_, args),) = _runners(srv).items()
    assert _value(args, "--load-mode") == "none"


def test_preload_loads_at_startup_and_keeps_forever(serve) -> None:
    srv = serve("[models.tiny]\npreload = true\n")

    def loaded() -> list[dict]:
        return [m for m in httpx.get(f"{srv.url}/api/ps").json()["models"] if m["name"] == "tiny:latest"]

    assert wait_until(lambda: loaded() and _runners(srv), timeout=30), srv.log()
    assert wait_until(lambda: "preloaded tiny:latest" in srv.log(), timeout=30), srv.log()
    (ps,) = loaded()
    assert datetime.fromisoformat(ps["expires_at"]).year > 2200  # forever
    _generate(srv)  # a request without keep_alive leaves it loaded forever
    (ps,) = loaded()
    assert datetime.fromisoformat(ps["expires_at"]).year > 2200


def test_a_failed_preload_is_logged_not_fatal(serve) -> None:
    srv = serve('[models."nosuch:1b"]\npreload = true\n')
    assert wait_until(lambda: "preload of nosuch:1b failed" in srv.log(), timeout=30), srv.log()
    assert httpx.get(srv.url).status_code == 200


def test_sighup_applies_new_tables_and_keeps_old_ones_on_a_bad_file(serve, tmp_path: Path) -> None:
    srv = serve("[models.tiny]\nnum_parallel = 2\n")
    _generate(srv)
    ((_, args),) = _runners(srv).items()
    assert _value(args, "--parallel") == "2"
    (tmp_path / "config.toml").write_text("[models.tiny]\nnum_parallel = 3\n")
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "settings reloaded" in srv.log()), srv.log()
    _generate(srv)  # the table changed: the runner restarts with it, as for a new num_ctx
    ((_, args),) = _runners(srv).items()
    assert _value(args, "--parallel") == "3"
    (tmp_path / "config.toml").write_text("[models.tiny]\nnum_parallel = 0\n")
    srv.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "settings not reloaded, the old ones stay in force: models.\"tiny\".num_parallel=0"
                      in srv.log()), srv.log()
    _generate(srv)
    ((_, args),) = _runners(srv).items()
    assert _value(args, "--parallel") == "3" and srv.proc.poll() is None
