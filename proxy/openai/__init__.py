"""The OpenAI-compatible dialect (`/v1/*`), with the Anthropic Messages route beside it."""
