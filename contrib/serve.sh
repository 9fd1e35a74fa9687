#!/usr/bin/env bash
# Set everything up and serve on OLLAMA_HOST (default 127.0.0.1:11434), with the embedded default
# model imported as smollm2:135m. Extra arguments go to `llamagate serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
contrib/setup.sh
. .venv/bin/activate
gguf="$(python contrib/default_model.py)"

llamagate serve "$@" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server"; exit' INT TERM
until llamagate list >/dev/null 2>&1; do
    kill -0 "$server" 2>/dev/null || exit 1
    sleep 0.2
done
if ! llamagate list | grep -q '^smollm2:135m '; then
    modelfile="$(dirname "$gguf")/Modelfile"
    printf 'FROM %s\n' "$gguf" > "$modelfile"
    llamagate create smollm2:135m -f "$modelfile"
fi
echo "llamagate is serving smollm2:135m; try: .venv/bin/llamagate run smollm2:135m 'Say this is a test'" >&2
wait "$server"
