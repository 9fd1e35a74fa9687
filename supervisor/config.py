"""Every setting of a llamagate server, resolved once at start: defaults < the TOML file <
environment < flags, each value remembering where it came from."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from supervisor.durations import parse_go_duration, parse_keep_alive
from supervisor.errors import LlamagateError
from supervisor.names import ModelName

# `llamagate --version` loads the settings to find the llama-server: what only a config file or its
# model tables need (tomllib; msgspec through model_tables) is imported when there is one.
if TYPE_CHECKING:
    from supervisor.model_tables import ModelSettings


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes in `8GB`, `512MiB` or a plain number; a typo is an error at start, not a silent 0."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (expected e.g. 8GB, 512MiB or a number of bytes)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_pairs(items: list[str] | tuple[str, ...], what: str) -> dict[str, list[str]]:
    """`NAME=value[,value…]` items (repeatable flags) as name → values, in order."""
    pairs: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise ValueError(f"{what} {item!r}: expected NAME=VALUE[,VALUE…]")
        pairs.setdefault(name.strip(), []).extend(v.strip() for v in values.split(",") if v.strip())
    return pairs


def default_config_file() -> Path:
    return platformdirs.user_config_path("llamagate") / "config.toml"


def parse_host(text: str, strict: bool = False) -> tuple[str, str, int]:
    """`OLLAMA_HOST` as Ollama reads it: (scheme, host, port) from `host`, `host:port`, `:port`,
    `[v6]:port` or `scheme://host[:port][/path]`; the default port is 11434 without a scheme.
    A bad port falls back to the default address, as ollama-python does; `strict` (the server's
    own listen address) makes it a ValueError instead."""
    scheme, sep, hostport = text.strip().partition("://")
    default_port = 11434
    if not sep:
        scheme, hostport = "http", text.strip()
    elif scheme in ("http", "https"):
        default_port = 80 if scheme == "http" else 443
    hostport = hostport.split("/", 1)[0]
    m = re.fullmatch(r"\[([^\]]*)\]:(.*)|([^:]*):(.*)", hostport)
    if m:
        host, port_text = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
    else:
        host, port_text = hostport.strip("[]"), ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        if strict:
            raise ValueError("port out of range" if port_text.isdigit() else "not a port")
        return "http", "127.0.0.1", 11434
    return scheme, host or "127.0.0.1", port


def default_threads() -> int:
    """Half the logical CPUs: llama.cpp's own default (all of them) collapses as soon as another
    process wants a core, and one thread per physical core is where CPU decoding peaks."""
    return max(1, (os.cpu_count() or 2) // 2)


# GitHub's releases API for llama.cpp; asset download URLs come from its answers.
LLAMA_CPP_RELEASES = "https://api.github.com/repos/ggml-org/llama.cpp/releases"


def own_models_dir() -> Path:
    return platformdirs.user_data_path("llamagate") / "models"


def default_models_dir(own: Path | None = None, ollama: Path | None = None) -> Path:
    """The store when OLLAMA_MODELS is unset: Ollama's own `~/.ollama/models` when it exists, so
    that a user of Ollama keeps every model they pulled, unless llamagate's own store already
    exists (a user who started with llamagate keeps theirs)."""
    own = own or own_models_dir()
    ollama = ollama or Path.home() / ".ollama" / "models"
    if not own.is_dir() and ollama.is_dir():
        return ollama
    return own


def parse_mirrors(text: str) -> dict[str, str]:
    """`LLAMAGATE_REGISTRY_MIRRORS`: `host=url[,host=url]`, the base URL to use for a registry
    host instead of `https://<host>` (an air-gapped mirror; the tests' loopback registries)."""
    mirrors = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, sep, url = item.partition("=")
        url = url.strip().rstrip("/")
        if not sep or not host.strip() or not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
            raise ValueError(f"LLAMAGATE_REGISTRY_MIRRORS: {item!r} is not host=http(s)://address")
        mirrors[host.strip().lower()] = url
    return mirrors


# Browser schemes an origin may name without a `*` (gin-contrib/cors with Ollama's
# AllowBrowserExtensions); any other entry must hold a wildcard, or Ollama refuses to start.
_ORIGIN_SCHEMES = ("http://", "https://", "chrome-extension://", "safari-extension://",
                   "moz-extension://", "ms-browser-extension://")


def parse_remotes(text: str) -> list[str]:
    """OLLAMA_REMOTES: the hosts a model made with `remote_host` may be served by (Ollama's
    allowlist, so that /api/create can't point this server at any address a client names)."""
    return [h.strip().lower() for h in text.split(",") if h.strip()]


def parse_origins(text: str) -> list[str]:
    """The origins a browser page may call from, as Ollama builds them: `OLLAMA_ORIGINS`
    (comma-separated, each kept as written), then localhost, 127.0.0.1 and 0.0.0.0 on any port
    over http and https, then the app shells' schemes (Electron, files, Tauri, VS Code)."""
    origins = text.split(",") if text else []
    for entry in origins:
        if entry.count("*") > 1:
            raise ValueError(f"OLLAMA_ORIGINS: {entry!r}: only one * is allowed")
        if "*" not in entry and not entry.startswith(_ORIGIN_SCHEMES):
            raise ValueError(f"OLLAMA_ORIGINS: {entry!r}: an origin must contain '*' or begin with "
                             + ", ".join(_ORIGIN_SCHEMES))
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        origins += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    return [*origins, "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]


def parse_keys(text: str) -> tuple[str, ...]:
    """`LLAMAGATE_API_KEYS` and `LLAMAGATE_ADMIN_KEYS`: comma-separated keys, blanks dropped."""
    return tuple(key for key in (part.strip() for part in text.split(",")) if key)


def read_keys_file(path: Path) -> tuple[str, ...]:
    """A keys file: one key a line; blank lines and lines starting with `#` are ignored."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


@dataclass(frozen=True)
class KeySettings:
    """Where the keys come from: given inline, and files that are read at start and on SIGHUP."""

    api: tuple[str, ...] = ()
    api_file: Path | None = None
    admin: tuple[str, ...] = ()
    admin_file: Path | None = None

    @property
    def enabled(self) -> bool:
        """Whether any key setting is given: then every route but the probes needs a key, even
        while the files hold none."""
        return bool(self.api or self.api_file or self.admin or self.admin_file)

    @property
    def separate_admin(self) -> bool:
        """Whether admin keys are set apart; without them an API key may do everything."""
        return bool(self.admin or self.admin_file)


class SettingError(ValueError):
    """A setting that can't be used, as one line: the setting, its source, what is accepted."""


def _env(name: str) -> str:
    """An environment value trimmed of whitespace and quotes, as Ollama reads its variables."""
    return os.environ.get(name, "").strip().strip("\"'")


# Parsers: the text of a setting (the default's, the file's, the environment's or a flag's) →
# its value, or a ValueError saying what is wrong and what would be right.

def _int(low: int, zero: int | None = None) -> Callable[[str], int]:
    """A whole number ≥ low; `zero` is what 0 means (Ollama's "0 = the default")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"not a whole number; expected a whole number ≥ {low}") from None
        if value < low:
            raise ValueError(f"out of range; expected a whole number ≥ {low}")
        return zero if zero is not None and value == 0 else value
    return parse


def _bool(text: str) -> bool:
    """Ollama's boolean grammar (strconv.ParseBool)."""
    lowered = text.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise ValueError("not a boolean; expected 1, t, true, 0, f or false")


def _optional_bool(text: str) -> bool | None:
    return _bool(text) if text else None


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_go_duration(text)
    except LlamagateError:
        raise ValueError("not a duration; expected e.g. 5m, 1h30m, -1 or a number of seconds") from None


def _keep_alive(text: str) -> float:
    return parse_keep_alive(_seconds(text))


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError:
        raise ValueError("not a size; expected e.g. 8GB, 512MiB or a number of bytes") from None


def _host(text: str) -> tuple[str, int]:
    try:
        _, host, port = parse_host(text, strict=True)
    except ValueError as e:
        raise ValueError(f"{e}; expected host, host:port, :port, [v6]:port or http(s)://host[:port], "
                         "port 0-65535") from None
    return host, port


def _path(text: str) -> Path | None:
    return Path(text).expanduser() if text else None


# Ollama's OLLAMA_KV_CACHE_TYPE values (envconfig; llm/server.go applies them to K and V alike).
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")


def _kv_cache_type(text: str) -> str:
    if text.lower() not in ("", *KV_CACHE_TYPES):
        raise ValueError("not a KV cache type; expected " + ", ".join(KV_CACHE_TYPES))
    return text.lower()


def _message_only(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser whose errors already say which entry is wrong and why (origins, mirrors): its
    message stands after the setting and source, without the setting's name a second time."""
    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise ValueError(str(e).split(": ", 1)[-1]) from None
    return wrapped


@dataclass(frozen=True)
class _Setting:
    name: str  # the Config field and the file's key
    env: str | None
    parse: Callable[[str], Any]
    default: Callable[[], str]


def _const(text: str) -> Callable[[], str]:
    return lambda: text


SETTINGS = (
    _Setting("host", "OLLAMA_HOST", _host, _const("127.0.0.1:11434")),
    _Setting("models_dir", "OLLAMA_MODELS", _path, lambda: str(default_models_dir())),
    _Setting("llama_server", "LLAMAGATE_LLAMA_SERVER", str, _const("")),
    _Setting("releases_url", "LLAMAGATE_RELEASES_URL", lambda t: t.rstrip("/"), _const(LLAMA_CPP_RELEASES)),
    _Setting("threads", "LLAMAGATE_THREADS", _int(1), lambda: str(default_threads())),
    # 0: by the VRAM found, as Ollama picks it (runtime/devices.py).
    _Setting("context_length", "OLLAMA_CONTEXT_LENGTH", _int(0), _const("0")),
    _Setting("num_parallel", "OLLAMA_NUM_PARALLEL", _int(0, zero=1), _const("1")),
    _Setting("keep_alive", "OLLAMA_KEEP_ALIVE", _keep_alive, _const("5m")),
    _Setting("load_timeout", "OLLAMA_LOAD_TIMEOUT", _seconds, _const("5m")),
    _Setting("flash_attention", "OLLAMA_FLASH_ATTENTION", _optional_bool, _const("")),
    _Setting("kv_cache_type", "OLLAMA_KV_CACHE_TYPE", _kv_cache_type, _const("")),
    # Ollama's 0: 3 per GPU, or 3 without one (Scheduler.max_loaded).
    _Setting("max_loaded_models", "OLLAMA_MAX_LOADED_MODELS", _int(0), _const("0")),
    _Setting("gpu_overhead", "OLLAMA_GPU_OVERHEAD", _size, _const("0")),
    _Setting("sched_spread", "OLLAMA_SCHED_SPREAD", _bool, _const("false")),
    _Setting("max_queue", "OLLAMA_MAX_QUEUE", _int(1), _const("512")),
    _Setting("max_memory", "LLAMAGATE_MAX_MEMORY", _size, _const("0")),
    _Setting("hang_timeout", "LLAMAGATE_HANG_TIMEOUT", _seconds, _const("5m")),
    _Setting("openai_seed_greedy", "LLAMAGATE_OPENAI_SEED_GREEDY", _bool, _const("true")),
    _Setting("openai_finish_stop", "LLAMAGATE_OPENAI_FINISH_STOP", _bool, _const("true")),
    _Setting("openai_tool_calls_stop", "LLAMAGATE_OPENAI_TOOL_CALLS_STOP", _bool, _const("false")),
    _Setting("no_cloud", "OLLAMA_NO_CLOUD", _bool, _const("false")),
    _Setting("noprune", "OLLAMA_NOPRUNE", _bool, _const("false")),
    _Setting("registry_mirrors", "LLAMAGATE_REGISTRY_MIRRORS", _message_only(parse_mirrors), _const("")),
    _Setting("origins", "OLLAMA_ORIGINS", _message_only(parse_origins), _const("")),
    _Setting("remotes", "OLLAMA_REMOTES", parse_remotes, _const("ollama.com")),
    _Setting("api_keys", "LLAMAGATE_API_KEYS", parse_keys, _const("")),
    _Setting("api_keys_file", "LLAMAGATE_API_KEYS_FILE", _path, _const("")),
    _Setting("admin_keys", "LLAMAGATE_ADMIN_KEYS", parse_keys, _const("")),
    _Setting("admin_keys_file", "LLAMAGATE_ADMIN_KEYS_FILE", _path, _const("")),
    _Setting("max_connections", "LLAMAGATE_MAX_CONNECTIONS", _int(0), _const("1024")),
    _Setting("keepalive_timeout", "LLAMAGATE_KEEPALIVE_TIMEOUT", _seconds, _const("5s")),
)
_BY_NAME = {s.name: s for s in SETTINGS}
# Settings whose values are secrets: `llamagate config` shows how many, not what.
_SECRET = ("api_keys", "admin_keys")
# The file's tables besides the settings above.
_TABLES = ("upstreams", "rpc", "models")


@dataclass(frozen=True)
class Source:
    """Where a setting's value came from, and its text there."""

    text: str
    origin: str  # "default", a file's path, an environment variable's name, or a flag


def _file_text(value: Any) -> str:
    """A file value as the text its parser reads: TOML's types where they say the same."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise ValueError("wrong type")


def _endpoints(raw: Any, key: str, source: str) -> dict[str, list[str]]:
    """An `[upstreams]` or `[rpc]` table: name → a string or a list of strings (comma-separated too)."""
    if not isinstance(raw, dict):
        raise SettingError(f"{key} ({source}): not a table; expected [{key}] with NAME = value(s)")
    out = {}
    for name, value in raw.items():
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise SettingError(f"{key}.{json.dumps(name)}={json.dumps(value)} ({source}): wrong type; "
                               "expected a string or a list of strings")
        try:
            ModelName.parse(name)
        except LlamagateError as e:
            raise SettingError(f"{key}.{json.dumps(name)} ({source}): not a model name: {e.message}") from None
        out[name] = [v for item in values for v in item.split(",") if v]
    return out


def _read_file(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise SettingError(f"{path}: cannot read the config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingError(f"{path}: not TOML: {e}") from None
    for key in data:
        if key not in _BY_NAME and key not in _TABLES:
            raise SettingError(f"{key} ({path}): unknown setting; expected one of "
                               + ", ".join([*_BY_NAME, *(f"[{t}]" for t in _TABLES)]))
    return data


def config_file_path(flag: Path | None) -> tuple[Path | None, str]:
    """The config file to read, and who named it: `--config`, LLAMAGATE_CONFIG, or the default
    path when a file is there (None: no file)."""
    if flag:
        return flag, "--config"
    if _env("LLAMAGATE_CONFIG"):
        return Path(_env("LLAMAGATE_CONFIG")).expanduser(), "LLAMAGATE_CONFIG"
    path = default_config_file()
    return (path, "default") if path.is_file() else (None, "default")


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 11434
    models_dir: Path = field(default_factory=default_models_dir)
    runtime_dir: Path = field(default_factory=lambda: platformdirs.user_cache_path("llamagate") / "runtime")
    llama_server: str = ""
    releases_url: str = LLAMA_CPP_RELEASES
    threads: int = field(default_factory=default_threads)
    context_length: int = 0
    num_parallel: int = 1
    keep_alive: float = 300.0
    load_timeout: float = 300.0
    stop_grace: float = 5.0
    # OLLAMA_FLASH_ATTENTION (None: unset, llama-server decides) and OLLAMA_KV_CACHE_TYPE ("": unset).
    flash_attention: bool | None = None
    kv_cache_type: str = ""
    # Scheduling (README, Configuration).
    max_loaded_models: int = 0
    gpu_overhead: int = 0
    sched_spread: bool = False
    max_queue: int = 512
    max_memory: int = 0
    hang_timeout: float = 300.0
    # Existing llama-servers by model name, and RPC workers for supervised models by model name.
    upstreams: dict[str, list[str]] = field(default_factory=dict)
    rpc: dict[str, list[str]] = field(default_factory=dict)
    # The config file's [models."name:tag"] tables, by model_tables.table_key.
    models: dict[str, ModelSettings] = field(default_factory=dict)
    # The rewrites of /v1's semantics (see proxy/openai/translate.py, "Rewrites").
    openai_seed_greedy: bool = True
    openai_finish_stop: bool = True
    openai_tool_calls_stop: bool = False
    # OLLAMA_NO_CLOUD: only what /api/status reports as the source; llamagate has no cloud.
    no_cloud: bool = False
    registry_mirrors: dict[str, str] = field(default_factory=dict)
    # OLLAMA_NOPRUNE: leave a killed process's leftovers in the store at startup.
    noprune: bool = False
    # Browser origins allowed to call the API (proxy/cors.py).
    origins: list[str] = field(default_factory=lambda: parse_origins(""))
    # The hosts that models made with `remote_host` may name (Ollama's OLLAMA_REMOTES).
    remotes: list[str] = field(default_factory=lambda: ["ollama.com"])
    # Who may call the API (proxy/auth.py), and what one connection may send and hold.
    keys: KeySettings = field(default_factory=KeySettings)
    max_connections: int = 1024
    keepalive_timeout: float = 5.0
    # Where each value came from (by setting name; upstreams, rpc and models by "table.name").
    sources: dict[str, Source] = field(default_factory=dict)
    # The config file read, if any, and the flags given: what `reload` reads again.
    config_file: Path | None = None
    _flags: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, config_file: Path | None = None, upstream: tuple[str, ...] = (), rpc: tuple[str, ...] = (),
             **flags: Any) -> Config:
        """Defaults < the config file < the environment < flags (None means unset); a bad value
        anywhere is a SettingError of one line."""
        path, named_by = config_file_path(config_file)
        data = _read_file(path) if path else {}
        values: dict[str, Any] = {}
        sources: dict[str, Source] = {}
        for setting in SETTINGS:
            text, origin, label = setting.default(), "default", setting.name
            if setting.name in data:
                label, origin = setting.name, str(path)
                try:
                    text = _file_text(data[setting.name])
                except ValueError:
                    raise SettingError(f"{label}={json.dumps(data[setting.name])} ({origin}): wrong type; "
                                       "expected a string, number or boolean") from None
            if setting.env and _env(setting.env):
                text, origin, label = _env(setting.env), setting.env, setting.env
            if flags.get(setting.name) is not None:
                flag = "--" + setting.name.replace("_", "-")
                text, origin, label = str(flags[setting.name]), flag, flag
            try:
                values[setting.name] = setting.parse(text)
            except ValueError as e:
                where = "environment" if origin == setting.env else origin
                raise SettingError(f"{label}={json.dumps(text)} ({where}): {e}") from None
            sources[setting.name] = Source(text, origin)
        tables: dict[str, dict[str, list[str]]] = {}
        for key, flag, given in (("upstreams", "--upstream", upstream), ("rpc", "--rpc", rpc)):
            tables[key] = _endpoints(data.get(key, {}), key, str(path))
            sources.update((f"{key}.{name}", Source(",".join(v), str(path))) for name, v in tables[key].items())
            # A name given as a flag replaces the file's entry of that name.
            flagged = parse_pairs(given, flag)
            for name in flagged:
                try:
                    ModelName.parse(name)
                except LlamagateError as e:
                    raise SettingError(f"{flag} {name!r}: not a model name: {e.message}") from None
            tables[key].update(flagged)
            sources.update((f"{key}.{name}", Source(",".join(v), flag)) for name, v in flagged.items())
        models: dict[str, ModelSettings] = {}
        if "models" in data:
            from supervisor.model_tables import given_fields, parse_tables

            try:
                models = parse_tables(data["models"], str(path))
            except ValueError as e:
                raise SettingError(str(e)) from None
            for name, table in models.items():
                for key in given_fields(table):
                    sources[f"models.{json.dumps(name)}.{key}"] = Source(_show(getattr(table, key)), str(path))
        if path:
            sources["config_file"] = Source(str(path), named_by)
        host, port = values.pop("host")
        keys = KeySettings(values.pop("api_keys"), values.pop("api_keys_file"),
                           values.pop("admin_keys"), values.pop("admin_keys_file"))
        return cls(host=host, port=port, keys=keys, upstreams=tables["upstreams"], rpc=tables["rpc"],
                   models=models, sources=sources, config_file=path,
                   _flags={"config_file": config_file, "upstream": upstream, "rpc": rpc, **flags}, **values)

    def reload(self) -> Config:
        """The settings as `load` reads them now, from the same file and flags (SIGHUP)."""
        return Config.load(**self._flags)

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, value, source) of every setting, then of each table entry, for `llamagate config`;
        keys are counted, not shown."""
        rows = []
        if "config_file" in self.sources:
            rows.append(("config_file", self.sources["config_file"].text, self.sources["config_file"].origin))
        for name, source in self.sources.items():
            if name == "config_file":
                continue
            text = source.text
            if name in _SECRET and text:
                text = f"({len(parse_keys(text))} keys)"
            elif name in _BY_NAME and text == "":
                text = "(unset)"
            rows.append((name, text, source.origin))
        return rows


def _show(value: Any) -> str:
    """A table value as `llamagate config` shows it (keep_alive in seconds; forever as -1)."""
    if isinstance(value, float):
        return "-1" if math.isinf(value) else f"{value:g}s"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return str(value)
