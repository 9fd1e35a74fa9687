#!/usr/bin/env bash
# The end-to-end client suite (tests/e2e), Open WebUI in a headless Chromium included: installs
# what it needs on a fresh machine (idempotent), then runs it. Extra arguments go to pytest.
#   contrib/setup.sh test (./.venv with Playwright, and Debian's chromium, which it drives: no
#   browser download), then Open WebUI in ./.venv-e2e of its own, so its many pins never touch
#   ./.venv, with the CPU build of torch installed first so that pip never picks a CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
OPEN_WEBUI_VERSION=0.12.4
TORCH_VERSION=2.13.0

contrib/setup.sh test
. .venv/bin/activate
python contrib/default_model.py >/dev/null

if ! [ -x .venv-e2e/bin/open-webui ] || ! .venv-e2e/bin/pip show open-webui 2>/dev/null | grep -qx "Version: $OPEN_WEBUI_VERSION"; then
    [ -x .venv-e2e/bin/python ] || "${PYTHON:-python3}" -m venv .venv-e2e
    .venv-e2e/bin/pip install --quiet "torch==$TORCH_VERSION"
    .venv-e2e/bin/pip install --quiet "open-webui==$OPEN_WEBUI_VERSION" "torch==$TORCH_VERSION"
fi

LLAMAGATE_E2E_OPEN_WEBUI="$PWD/.venv-e2e/bin/open-webui" exec python -m pytest -p no:cacheprovider tests/e2e/test_*.py tests/e2e/long_chats.py tests/e2e/browser_open_webui.py "$@"
