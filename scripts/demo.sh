#!/usr/bin/env bash
# `make demo`: the order saga (examples/orders, docs/tutorial.md), from a
# fresh clone. Installs what is missing (scripts/setup.sh), builds the four
# plugins (Python validation, Rust inventory and payment, JavaScript
# shipping), the host and the demo driver, then starts:
#   - a nats-server with JetStream on a free port (`sluice dev` starts it;
#     set SLUICE_DEMO_NATS=nats://HOST:PORT to use a server of yours, which
#     must not have an ORDERS stream yet),
#   - the fake payment service (examples/orders/payments.py) on loopback,
#   - `sluice dev` on an empty plugin folder, .demo/plugins,
# and runs the driver (orders-demo): it deploys the plugins by copying them
# into the folder and plays the five scenes. Everything stops at the end.
# DEMO_KEEP=1 keeps the application running afterwards, placing the orders
# you type (docs/tutorial.md), until Ctrl-D.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
. scripts/setup.sh

DEMO="$ROOT/.demo"
BUILD="$DEMO/build"
rm -rf "$DEMO" && mkdir -p "$DEMO/plugins" "$BUILD"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NATS_URL="${SLUICE_DEMO_NATS:-nats://127.0.0.1:$(free_port)}"

echo "demo: building the plugins (Rust for wasm32-wasip2, Python with componentize-py, JavaScript with componentize-js), the host and the driver"
cargo build --quiet --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml --target-dir plugins/target
cargo build --quiet -p sluice --bin sluice -p sluice-orders --bin orders-demo
SLUICE="$ROOT/target/debug/sluice"
RUST_OUT="plugins/target/wasm32-wasip2/release"
cp "$RUST_OUT/orders_inventory.wasm" "$BUILD/orders-inventory.wasm"
cp "$RUST_OUT/orders_inventory_v2.wasm" "$BUILD/orders-inventory-v2.wasm"
cp "$RUST_OUT/orders_payment.wasm" "$BUILD/orders-payment.wasm"

# Python and JavaScript builds take 15 to 30 s each: cache them by the hash
# of their inputs (the plugin folder, the language's SDK, the WIT).
polyglot() { # NAME SDK_DIR
    local name="$1" sdk="$2" hash out
    hash="$(find "plugins/$name" "$sdk" wit -type f ! -name '*.wasm' ! -path '*/node_modules/*' ! -path '*/__pycache__/*' \
        | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
    out="plugins/target/demo/$name-$hash.wasm"
    if [ ! -f "$out" ]; then
        mkdir -p plugins/target/demo
        "$sdk/build.sh" "plugins/$name" "$out.tmp" >/dev/null
        mv "$out.tmp" "$out"
    fi
    cp "$out" "$BUILD/$name.wasm"
}
polyglot orders-validate plugin-sdk/python
polyglot orders-shipping plugin-sdk/js
for name in orders-validate orders-inventory orders-payment orders-shipping; do
    cp "plugins/$name/manifest.toml" "$BUILD/$name.toml"
done

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Wait (at most $2 tenths of a second) for file $1 to contain $3.
wait_for_line() {
    for _ in $(seq 1 "$2"); do
        grep -q "$3" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo: no \"$3\" in $1 in time:" >&2; cat "$1" >&2; return 1
}

python3 examples/orders/payments.py --port 0 >"$DEMO/payments.log" 2>&1 &
PAYMENTS_PID=$!
PIDS+=("$PAYMENTS_PID")
wait_for_line "$DEMO/payments.log" 100 "payments listening on"
PAYMENTS_URL="$(sed -n 's/^payments listening on //p' "$DEMO/payments.log" | head -1)"
echo "demo: fake payment service on $PAYMENTS_URL (examples/orders/payments.py)"

# The operator's side: where the payment plugin's service is.
sed "s|http://127.0.0.1:8099|$PAYMENTS_URL|" examples/orders/sluice.toml >"$DEMO/sluice.toml"

echo "demo: starting: sluice dev $DEMO/plugins --config $DEMO/sluice.toml --nats-url $NATS_URL (log: .demo/sluice.log)"
"$SLUICE" dev "$DEMO/plugins" --config "$DEMO/sluice.toml" --nats-url "$NATS_URL" --data-dir "$DEMO/nats" \
    --log "warn,sluice=info" 2>"$DEMO/sluice.log" &
HOST_PID=$!
PIDS=("$HOST_PID" "${PIDS[@]}")
wait_for_line "$DEMO/sluice.log" 600 "sluice is serving"
ADMIN="$(grep -o 'admin endpoint on http://[0-9.]*:[0-9]*' "$DEMO/sluice.log" | head -1 | sed 's|.* on http://||')"
echo "demo: host serving; admin endpoint http://$ADMIN (/plugins, /metrics)"

STARTED=$SECONDS
"$ROOT/target/debug/orders-demo" --nats "$NATS_URL" --payments "$PAYMENTS_URL" --admin "$ADMIN" \
    --plugins "$DEMO/plugins" --build "$BUILD" --sluice "$SLUICE" ${DEMO_KEEP:+--keep}

echo
echo "demo: a few counters from http://$ADMIN/metrics:"
exec 3<>"/dev/tcp/${ADMIN%:*}/${ADMIN##*:}"
printf 'GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$ADMIN" >&3
sed '1,/^\r$/d' <&3 | grep -E '^sluice_(events_handled_total|retries_total|dead_lettered_total|breaker_transitions_total)\{' \
    | grep 'orders-' | grep -v ' 0$' | head -20 | sed 's/^/  /' || true
exec 3<&-

echo "demo: scenes took $((SECONDS - STARTED)) s; stopping sluice (SIGTERM) and the payment service"
kill -TERM "$HOST_PID"
if wait "$HOST_PID"; then echo "demo: sluice exited cleanly (status 0)"; else echo "demo: sluice exited with status $?"; fi
PIDS=("$PAYMENTS_PID")
echo "demo: done (logs in .demo/)"
