"""fetch-py: the Python twin of plugins/fetch (the outbound HTTP test
plugin). The event's payload holds URLs, one per line; the plugin GETs each
in turn (without an idempotency key when the line starts with ``-``) and
publishes ``<status> <body bytes>`` per URL to ``fetched.out``. The first
failed request fails the event with the SDK's error (permanent when the host
refused it, retryable on a timeout), uncaught, as ``?`` does in Rust.
"""

import sluice
from sluice import http


def handle(event: sluice.Event) -> None:
    report = []
    for line in event.text().splitlines():
        line = line.strip()
        if not line:
            continue
        keyed = not line.startswith("-")
        request = http.Request("GET", line if keyed else line[1:])
        if not keyed:
            request = request.without_idempotency_key()
        response = request.send()
        report.append(f"{response.status} {len(response.body)}\n")
    sluice.publish("fetched.out", "".join(report))
