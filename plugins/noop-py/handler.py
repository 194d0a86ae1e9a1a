"""`noop` in Python: does nothing. The benchmarks' per-event floor of a
componentize-py plugin (plugins/noop is the Rust one)."""


def handle(event) -> None:
    pass
