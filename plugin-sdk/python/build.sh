#!/usr/bin/env bash
# Build a Python sluice plugin folder into a component:
#   plugin-sdk/python/build.sh PLUGIN_DIR [OUT.wasm]
# PLUGIN_DIR holds handler.py (`def handle(event) -> None`) and any modules it
# imports; OUT defaults to PLUGIN_DIR/<folder name>.wasm. Uses componentize-py
# from .tools/ (installed by scripts/setup.sh) or $COMPONENTIZE_PY.
set -euo pipefail
SDK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SDK/../.." && pwd)"
if [ $# -lt 1 ] || [ ! -f "$1/handler.py" ]; then
    echo "usage: $0 PLUGIN_DIR [OUT.wasm]  (PLUGIN_DIR must contain handler.py)" >&2
    exit 2
fi
DIR="$(cd "$1" && pwd)"
OUT="${2:-$DIR/$(basename "$DIR").wasm}"
if [ -n "${COMPONENTIZE_PY:-}" ]; then
    TOOL=("$COMPONENTIZE_PY")
elif [ -x "$ROOT/.tools/componentize-py/bin/componentize-py" ]; then
    export PYTHONPATH="$ROOT/.tools/componentize-py${PYTHONPATH:+:$PYTHONPATH}"
    TOOL=("$ROOT/.tools/componentize-py/bin/componentize-py")
else
    echo "componentize-py not found: run \`. scripts/setup.sh\` in $ROOT (installs it into .tools/) or set COMPONENTIZE_PY" >&2
    exit 1
fi
# Build into a temp file so a failed build never leaves a half-written OUT.
TMP="$(mktemp "${OUT}.XXXXXX")"
trap 'rm -f "$TMP"' EXIT
"${TOOL[@]}" -d "$ROOT/wit/0.2.0" -w consumer componentize \
    -p "$SDK" -p "$DIR" sluice_entry -o "$TMP" >&2
chmod 644 "$TMP"
mv "$TMP" "$OUT"
trap - EXIT
echo "$OUT"
