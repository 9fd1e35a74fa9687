"""The supervisor: llama-server binaries, the model store and the runner processes."""
