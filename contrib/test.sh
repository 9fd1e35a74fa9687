#!/usr/bin/env bash
# Set everything up and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
contrib/setup.sh test
. .venv/bin/activate
python contrib/default_model.py >/dev/null
exec python -m pytest "$@"
