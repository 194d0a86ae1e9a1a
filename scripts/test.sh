#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, then runs
# unit tests and the end-to-end tests (which build plugins/ and start their own
# nats-server per test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
# When the run fails, end with what the machine looked like: CI shows only the
# tail of the output, and a full disk or a compiler crash is otherwise invisible.
report_failure() {
    local rc=$?
    {
        echo "---- make test failed (exit $rc): disk, memory, build size ----"
        df -h . | tail -n 1
        free -m | sed -n 2p
        du -sh target 2>/dev/null
        for ice in rustc-ice-*.txt */rustc-ice-*.txt; do
            [ -f "$ice" ] && head -n 12 "$ice"
        done
    } >&2 || true
    exit "$rc"
}
trap report_failure ERR
# A from-scratch run gains nothing from incremental compilation, which would write
# several GB of session state beside the build; a developer's own `cargo test` keeps it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml --target-dir plugins/target
cargo test --workspace --locked -- --test-threads 2
