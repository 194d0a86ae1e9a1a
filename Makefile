# The two commands of the README. Both install what they need on a fresh machine.
.PHONY: demo test lint plugins

## Run the demo: the order saga (examples/orders, docs/tutorial.md) on a
## local nats-server, the host and a fake payment service, then a clean stop.
demo:
	./scripts/demo.sh

## Run the whole test suite (what CI runs).
test:
	./scripts/test.sh

## Formatting and lints (host workspace and plugins).
lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cd plugins && cargo fmt --all --check && cargo clippy --target wasm32-wasip2 --all-targets -- -D warnings

plugins:
	cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml --target-dir plugins/target
