"""What `llamagate --version` prints: ours, the Ollama release whose API we answer as, and the
llama-server `serve` would run. Light on imports: entry.py answers `--version` before click loads."""

from __future__ import annotations


def version_lines() -> list[str]:
    """Ours, the Ollama release whose API we answer as, and the llama-server `serve` would run."""
    from supervisor.config import Config
    from supervisor.errors import LlamagateError
    from supervisor.runtime.binary import find_llama_server
    from supervisor.runtime.build_tag import build_tag
    from supervisor.runtime.layout import DEFAULT_TAG
    from supervisor.version import OLLAMA_VERSION, VERSION

    lines = [f"llamagate {VERSION} (Ollama API {OLLAMA_VERSION})"]
    try:
        config = Config.load()
    except ValueError as e:  # a bad setting: say which, as `serve` would
        return [*lines, f"llama-server: {e}"]
    try:
        binary = find_llama_server(config.llama_server, config.runtime_dir)
    except LlamagateError as e:
        if config.llama_server:
            return [*lines, f"llama-server: {e.message}"]
        return [*lines, f"llama-server: none found (the first model load downloads llama.cpp {DEFAULT_TAG}; "
                        "`llamagate runtime install` does it now)"]
    return [*lines, f"llama-server {build_tag(binary.path, config.runtime_dir)} at {binary.path} "
                    f"(from {binary.source})"]
