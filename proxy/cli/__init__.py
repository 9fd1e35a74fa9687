"""The command line, a client of the server like `ollama`'s (except `serve`)."""
