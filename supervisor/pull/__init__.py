"""Pulling models: Ollama's registry protocol and Hugging Face, resumable parallel downloads."""
