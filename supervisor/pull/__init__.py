"""Registry transfers: pulling models (Ollama's registry protocol and Hugging Face, resumable parallel
downloads), pushing them, and the credentials both present."""
