"""The proxy: the HTTP dialects (Ollama, OpenAI), the ASGI app and the CLI."""
