"""Versions: llamagate's own (written here alone: pyproject.toml reads it, see its
[tool.setuptools.dynamic]) and the Ollama release whose API it answers as."""

# A literal, not importlib.metadata's answer: reading the installed metadata costs `llamagate
# --version` about 30 ms of imports (email, zipfile, csv), and a PyInstaller one-file has none.
VERSION = "0.1.0"

# The Ollama release whose API we follow (its fields up to /api/show's `thinking` and /api/status),
# reported by /api/version too: registries, Hugging Face's among them, answer Ollama's protocol to
# an `ollama/` User-Agent.
OLLAMA_VERSION = "0.34.2"
