#!/usr/bin/env bash
# The load-and-soak (tests/long/test_soak.py): 32 clients for 10 minutes against SmolLM2, the
# server's fds, threads and RSS sampled; figures to soak-figures.json (or LLAMAGATE_SOAK_OUT).
# LLAMAGATE_SOAK_SECONDS and LLAMAGATE_SOAK_CLIENTS change its size. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
contrib/setup.sh test
. .venv/bin/activate
python contrib/default_model.py >/dev/null
LLAMAGATE_LONG=1 LLAMAGATE_SOAK_OUT="${LLAMAGATE_SOAK_OUT:-$PWD/soak-figures.json}" \
    exec python -m pytest tests/long/test_soak.py "$@"
