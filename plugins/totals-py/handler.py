"""totals-py: the Python twin of plugins/totals (a running total per key in
state, updated with compare-and-swap, published to ``totals.updated.<key>``).

For tests: header ``x-fail`` makes the handler fail after writing (the write
must vanish).
"""

import sluice


def handle(event: sluice.Event) -> None:
    prefix = "totals.add."
    if not event.subject.startswith(prefix):
        raise sluice.Permanent("expected totals.add.<key>")
    key = event.subject[len(prefix):]
    try:
        amount = int(event.text().strip())
    except ValueError:
        raise sluice.Permanent("the payload is not a whole number") from None
    state_key = f"total/{key}"
    entry = sluice.state.get(state_key)
    total, revision = (0, 0) if entry is None else (int(entry.value or b"0"), entry.revision)
    total += amount
    sluice.state.cas(state_key, revision, str(total))
    if event.header("x-fail") is not None:
        raise sluice.Retryable("failing after the write, as asked")
    sluice.publish(f"totals.updated.{key}", str(total))
