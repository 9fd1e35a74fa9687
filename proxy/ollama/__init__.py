"""Ollama's native API (`/api/*`, NDJSON streaming)."""
