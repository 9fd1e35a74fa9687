"""Every setting of a llamagate server, resolved once at start from flags and the environment."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from supervisor.durations import parse_go_duration, parse_keep_alive


def _env(name: str) -> str:
    """An environment value trimmed of whitespace and quotes, as Ollama reads its variables."""
    return os.environ.get(name, "").strip().strip("\"'")


def _env_int(name: str, default: int) -> int:
    try:
        return int(_env(name) or default)
    except ValueError:
        return default


def _env_bool(name: str, default: bool) -> bool:
    """Ollama's boolean grammar (strconv.ParseBool): 1/t/true/0/f/false, any case; else the default."""
    text = _env(name).lower()
    if text in ("1", "t", "true"):
        return True
    if text in ("0", "f", "false"):
        return False
    return default


def _env_seconds(name: str, default: str) -> float:
    text = _env(name) or default
    return float(text) if text.lstrip("-").isdigit() else parse_go_duration(text)


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


def read_config_file(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The `[upstreams]` and `[rpc]` tables of a TOML config file: name → a URL or list of URLs,
    name → a `host:port` or list of them."""
    with open(path, "rb") as f:
        data = tomllib.load(f)

    def table(key: str) -> dict[str, list[str]]:
        raw = data.get(key, {})
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: [{key}] must be a table")
        out = {}
        for name, value in raw.items():
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values) or not values:
                raise ValueError(f"{path}: {key}.{name} must be a string or a list of strings")
            out[name] = [v for item in values for v in item.split(",") if v]
        return out

    return table("upstreams"), table("rpc")


def parse_host(text: str) -> tuple[str, str, int]:
    """`OLLAMA_HOST` as Ollama reads it: (scheme, host, port) from `host`, `host:port`, `:port`,
    `[v6]:port` or `scheme://host[:port][/path]`; the default port is 11434 without a scheme."""
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


def _env_path(name: str) -> Path | None:
    return Path(_env(name)).expanduser() if _env(name) else None


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 11434
    models_dir: Path = field(default_factory=default_models_dir)
    runtime_dir: Path = field(default_factory=lambda: platformdirs.user_cache_path("llamagate") / "runtime")
    llama_server: str = ""
    releases_url: str = LLAMA_CPP_RELEASES
    threads: int = field(default_factory=default_threads)
    context_length: int = 4096
    num_parallel: int = 1
    keep_alive: float = 300.0
    load_timeout: float = 300.0
    stop_grace: float = 5.0
    # Scheduling (README, Configuration).
    max_loaded_models: int = 3
    max_queue: int = 512
    max_memory: int = 0
    hang_timeout: float = 300.0
    # Existing llama-servers by model name, and RPC workers for supervised models by model name.
    upstreams: dict[str, list[str]] = field(default_factory=dict)
    rpc: dict[str, list[str]] = field(default_factory=dict)
    # The rewrites of /v1's semantics (see proxy/openai/translate.py, "Rewrites").
    openai_seed_greedy: bool = True
    openai_finish_stop: bool = True
    openai_tool_calls_stop: bool = False
    registry_mirrors: dict[str, str] = field(default_factory=dict)
    # Browser origins allowed to call the API (proxy/cors.py).
    origins: list[str] = field(default_factory=lambda: parse_origins(""))
    # Who may call the API (proxy/auth.py), and what one connection may send and hold.
    keys: KeySettings = field(default_factory=KeySettings)
    max_connections: int = 1024
    keepalive_timeout: float = 5.0

    @classmethod
    def from_env(cls, **overrides: object) -> Config:
        """Defaults ← environment ← explicit overrides (command-line flags; None means unset)."""
        _, host, port = parse_host(_env("OLLAMA_HOST"))
        cfg = cls(
            host=host,
            port=port,
            llama_server=_env("LLAMAGATE_LLAMA_SERVER"),
            releases_url=(_env("LLAMAGATE_RELEASES_URL") or LLAMA_CPP_RELEASES).rstrip("/"),
            threads=_env_int("LLAMAGATE_THREADS", default_threads()),
            context_length=_env_int("OLLAMA_CONTEXT_LENGTH", 4096) or 4096,
            num_parallel=max(1, _env_int("OLLAMA_NUM_PARALLEL", 1)),
            keep_alive=parse_keep_alive(_env_seconds("OLLAMA_KEEP_ALIVE", "5m")),
            load_timeout=_env_seconds("OLLAMA_LOAD_TIMEOUT", "5m"),
            # Ollama's 0 means "3 per GPU, or 3 on CPU"; llamagate counts no GPUs, so 3.
            max_loaded_models=_env_int("OLLAMA_MAX_LOADED_MODELS", 0) or 3,
            max_queue=max(1, _env_int("OLLAMA_MAX_QUEUE", 512)),
            max_memory=parse_size(_env("LLAMAGATE_MAX_MEMORY") or "0"),
            hang_timeout=_env_seconds("LLAMAGATE_HANG_TIMEOUT", "5m"),
            openai_seed_greedy=_env_bool("LLAMAGATE_OPENAI_SEED_GREEDY", True),
            openai_finish_stop=_env_bool("LLAMAGATE_OPENAI_FINISH_STOP", True),
            openai_tool_calls_stop=_env_bool("LLAMAGATE_OPENAI_TOOL_CALLS_STOP", False),
            registry_mirrors=parse_mirrors(_env("LLAMAGATE_REGISTRY_MIRRORS")),
            origins=parse_origins(_env("OLLAMA_ORIGINS")),
            keys=KeySettings(
                api=parse_keys(_env("LLAMAGATE_API_KEYS")),
                api_file=_env_path("LLAMAGATE_API_KEYS_FILE"),
                admin=parse_keys(_env("LLAMAGATE_ADMIN_KEYS")),
                admin_file=_env_path("LLAMAGATE_ADMIN_KEYS_FILE"),
            ),
            max_connections=max(0, _env_int("LLAMAGATE_MAX_CONNECTIONS", 1024)),
            keepalive_timeout=_env_seconds("LLAMAGATE_KEEPALIVE_TIMEOUT", "5s"),
        )
        if models := _env("OLLAMA_MODELS"):
            cfg.models_dir = Path(models).expanduser()
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg

    def add_endpoints(self, config_file: Path | None, upstream: tuple[str, ...], rpc: tuple[str, ...]) -> None:
        """Upstreams and RPC workers from the config file (`--config`, `LLAMAGATE_CONFIG`, or the
        default path when it exists), then from flags; a name given as a flag replaces the file's."""
        explicit = config_file or (Path(_env("LLAMAGATE_CONFIG")).expanduser() if _env("LLAMAGATE_CONFIG") else None)
        path = explicit or default_config_file()
        if explicit or path.is_file():
            self.upstreams, self.rpc = read_config_file(path)
        self.upstreams.update(parse_pairs(upstream, "--upstream"))
        self.rpc.update(parse_pairs(rpc, "--rpc"))
