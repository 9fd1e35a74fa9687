"""Prebuilt llama-server builds: pick the official llama.cpp release asset for this machine,
download, verify, unpack and switch between them in llamagate's cache."""
