#!/usr/bin/env bash
# The sluice demo, from a fresh clone: installs what is missing, builds the
# example plugins and the host, runs `sluice dev` on a demo plugin folder
# (which starts a local nats-server if none answers on $SLUICE_DEMO_NATS,
# default nats://127.0.0.1:4222), publishes sample events, shows them being
# processed and counted in /metrics, and stops everything cleanly.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
. scripts/setup.sh

NATS_URL="${SLUICE_DEMO_NATS:-nats://127.0.0.1:4222}"
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

HOST_PID=""
cleanup() {
    [ -n "$HOST_PID" ] && kill "$HOST_PID" 2>/dev/null && wait "$HOST_PID" 2>/dev/null || true
}
trap cleanup EXIT

# GET http://HOST:PORT/PATH with bash only (no curl needed).
http_get() {
    local hostport="${1#http://}" path="$2"
    exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}"
    printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$hostport" >&3
    sed '1,/^\r$/d' <&3
    exec 3<&-
}

# `sluice dev` starts a nats-server (JetStream, data in .demo/nats) when none
# answers at $NATS_URL, serves the folder, and stops that server on exit.
echo "demo: starting: sluice dev $DEMO/plugins --nats-url $NATS_URL --data-dir $DEMO/nats"
"$SLUICE" dev "$DEMO/plugins" --nats-url "$NATS_URL" --data-dir "$DEMO/nats" --log info \
    2> >(tee "$DEMO/sluice.log" >&2) &
HOST_PID=$!
for _ in $(seq 1 600); do
    grep -q "sluice is serving" "$DEMO/sluice.log" 2>/dev/null && break
    kill -0 "$HOST_PID" 2>/dev/null || { echo "demo: sluice exited early; see above"; exit 1; }
    sleep 0.1
done

"$TRAFFIC" "$NATS_URL"

ADMIN="$(grep -o 'admin endpoint on http://[0-9.]*:[0-9]*' "$DEMO/sluice.log" | head -1 | sed 's/.* on //')"
echo "demo: $ADMIN/readyz says: $(http_get "$ADMIN" /readyz | head -1)"
echo "demo: a few counters from $ADMIN/metrics:"
http_get "$ADMIN" /metrics | grep -E '^sluice_(events_handled_total|retries_total|dead_lettered_total)\{' | grep -v ' 0$' | sed 's/^/  /'

echo "demo: stopping sluice (SIGTERM)"
kill -TERM "$HOST_PID"
wait "$HOST_PID" && echo "demo: sluice exited cleanly (status 0)"
HOST_PID=""
echo "demo: done"
