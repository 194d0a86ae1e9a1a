#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, then runs
# unit tests and the end-to-end tests (which build plugins/ and start their own
# nats-server per test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml --target-dir plugins/target
cargo test --workspace --locked -- --test-threads 2
