"""The status page at /ui: what is loaded, waiting and being pulled, updated live over SSE."""
