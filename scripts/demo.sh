#!/usr/bin/env bash
# The sluice demo, from a fresh clone: installs what is missing, builds the
# example plugins and the host, starts a local nats-server if none answers on
# $SLUICE_DEMO_NATS (default nats://127.0.0.1:4222), runs the host on a demo
# plugin folder, publishes sample events, shows them being processed, and
# stops everything cleanly.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
. scripts/setup.sh

NATS_URL="${SLUICE_DEMO_NATS:-nats://127.0.0.1:4222}"
HOSTPORT="${NATS_URL#nats://}"
HOST="${HOSTPORT%:*}"
PORT="${HOSTPORT##*:}"
DEMO="$ROOT/.demo"
rm -rf "$DEMO" && mkdir -p "$DEMO/plugins"

echo "demo: building example plugins (wasm32-wasip2) and the host"
cargo build --quiet --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml --target-dir plugins/target
cargo build --quiet -p sluice --bin sluice --example demo_traffic
SLUICE="$ROOT/target/debug/sluice"
TRAFFIC="$ROOT/target/debug/examples/demo_traffic"

for p in echo enrich flaky reject; do
    cp "plugins/target/wasm32-wasip2/release/$p.wasm" "$DEMO/plugins/$p.wasm"
    cp "plugins/$p/manifest.toml" "$DEMO/plugins/$p.toml"
done
echo "demo: plugin folder $DEMO/plugins:"; ls -1 "$DEMO/plugins" | sed 's/^/  /'
"$SLUICE" check "$DEMO/plugins/enrich.wasm" | head -3

NATS_PID=""; HOST_PID=""
cleanup() {
    [ -n "$HOST_PID" ] && kill "$HOST_PID" 2>/dev/null && wait "$HOST_PID" 2>/dev/null || true
    [ -n "$NATS_PID" ] && kill "$NATS_PID" 2>/dev/null && wait "$NATS_PID" 2>/dev/null || true
}
trap cleanup EXIT

if (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; then
    echo "demo: using the nats-server already listening at $NATS_URL"
else
    echo "demo: starting nats-server on $HOST:$PORT (JetStream, data in .demo/nats)"
    "$NATS_SERVER_BIN" -a "$HOST" -p "$PORT" -js -sd "$DEMO/nats" >"$DEMO/nats.log" 2>&1 &
    NATS_PID=$!
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null && break; sleep 0.1; done
fi

echo "demo: starting: sluice run --nats-url $NATS_URL --plugins $DEMO/plugins"
"$SLUICE" run --nats-url "$NATS_URL" --plugins "$DEMO/plugins" --log "info" 2> >(tee "$DEMO/sluice.log" >&2) &
HOST_PID=$!
for _ in $(seq 1 600); do
    grep -q "sluice is serving" "$DEMO/sluice.log" 2>/dev/null && break
    kill -0 "$HOST_PID" 2>/dev/null || { echo "demo: sluice exited early; see above"; exit 1; }
    sleep 0.1
done

"$TRAFFIC" "$NATS_URL"

echo "demo: stopping sluice (SIGTERM)"
kill -TERM "$HOST_PID"
wait "$HOST_PID" && echo "demo: sluice exited cleanly (status 0)"
HOST_PID=""
echo "demo: done"
