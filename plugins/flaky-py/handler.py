"""`flaky` in Python: fails with a retryable error for the first N attempts of
each event, N from the `x-fail-times` header (default 0), then succeeds. It
publishes `<subject>.done` on every attempt, so tests see that publishes of
failed attempts are discarded (the outbox). As plugins/flaky, plus two
headers to show the other outcomes:

- `x-retry-after-ms`: a delay hint on the retryable error;
- `x-fail-until-ms` (Unix epoch ms): every attempt before then fails (retryable);
- `x-permanent: MESSAGE`: fail with a permanent error (dead-lettered at once);
- `x-throw: MESSAGE`: raise an uncaught exception (a trap).
"""

import time

import sluice


def _int(text):
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def handle(event: sluice.Event) -> None:
    fail_times = _int(event.header("x-fail-times")) or 0
    sluice.publish(f"{event.subject}.done", event.payload, [("x-attempt", str(event.attempt))])
    if (message := event.header("x-permanent")) is not None:
        raise sluice.Permanent(message)
    if (message := event.header("x-throw")) is not None:
        raise RuntimeError(message)
    until = _int(event.header("x-fail-until-ms"))
    if until is not None:
        now = int(time.time() * 1000)
        if now < until:
            raise sluice.Retryable(f"dependency down for another {until - now} ms")
    if event.attempt <= fail_times:
        raise sluice.Retryable(
            f"simulated failure {event.attempt} of {fail_times}",
            retry_after_ms=_int(event.header("x-retry-after-ms")),
        )
    sluice.info(f"flaky succeeded on attempt {event.attempt}")
