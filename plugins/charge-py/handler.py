"""charge-py: the Python twin of plugins/charge (the outbound HTTP example).
Each order (a JSON event) is POSTed to the payment API at the ``url``
configuration value; the SDK sends the event's idempotency key as
``Idempotency-Key``, so a retried event charges once at an API that honours it.

- 2xx: the API's answer is published to ``charges.done``;
- 5xx (or 429): retryable, after the API's ``Retry-After`` if it gives one;
- other 4xx: permanent, the event is dead-lettered with the API's reason.
"""

import sluice
from sluice import http


def handle(event: sluice.Event) -> None:
    url = sluice.config.require("url")
    order = event.json()
    response = http.post_json(url, order)
    if response.is_success:
        sluice.publish("charges.done", response.body, {"Content-Type": "application/json"})
    elif response.status == 429 or 500 <= response.status <= 599:
        why = f"payment API answered {response.status}"
        raise sluice.Retryable(why, retry_after_ms=_retry_after_ms(response))
    else:
        body = response.body.decode("utf-8", "replace")
        raise sluice.Permanent(f"payment API refused the charge with {response.status}: {body}")


def _retry_after_ms(response: http.Response):
    """The API's ``Retry-After`` in milliseconds, if it sent whole seconds."""
    value = (response.header("retry-after") or "").strip()
    return int(value) * 1000 if value.isdigit() else None
