"""Versions: llamagate's own (from the installed package's metadata, so pyproject.toml is the only
place it is written) and the Ollama release whose API it answers as."""

from importlib.metadata import version

VERSION = version("llamagate")

# The Ollama release whose API we follow, reported by /api/version too: registries, Hugging
# Face's among them, answer Ollama's protocol to an `ollama/` User-Agent.
OLLAMA_VERSION = "0.12.11"
