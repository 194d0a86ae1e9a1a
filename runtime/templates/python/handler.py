"""`{{name}}`: a sluice consumer plugin. Parses the payload as JSON, logs it,
and publishes it to `<subject>.seen`. Edit `handle`; build with `make`.

Helpers (docs/writing-plugins.md, Python section) are in the commented
examples below. Each capability must also be granted in `{{name}}.toml`
(`[config]`, `state = true`, `request = [...]`, `http = [...]`). Leaving one
of their errors uncaught fails the event as the Rust SDK's `?` would:
retryable when a retry could help (store or service unavailable, HTTP
timeout or connection failure), permanent otherwise (not granted, refused).
"""

import sluice
from sluice import http  # noqa: F401 - used by the commented HTTP example


def handle(event: sluice.Event) -> None:
    value = event.json()  # bad JSON -> sluice.Permanent
    if value is None:
        raise sluice.Permanent("expected a JSON value, got null")
    sluice.info(f"{{name}} got an event on {event.subject}")

    # Configuration: the manifest's [config], the operator's values and secrets.
    # api_url = sluice.config.get("api_url") or "https://api.example.com"
    # token = sluice.config.require("api_token")  # unset -> Permanent naming the key

    # State (manifest: state = true); writes commit only if handle returns.
    # entry = sluice.state.get("count")
    # count, revision = (0, 0) if entry is None else (int(entry.value), entry.revision)
    # sluice.state.cas("count", revision, str(count + 1))  # changed meanwhile -> retried

    # Ask another service (manifest: request = ["prices.>"]).
    # answer = sluice.request("prices.quote", b'{"sku":"A-1"}', timeout=2.0)

    # Outbound HTTP (manifest: http = ["https://api.example.com"]). Every
    # request carries the event's idempotency key as `Idempotency-Key`.
    # response = http.post_json(f"{api_url}/v1/charges", value)
    # response = http.Request("GET", f"{api_url}/v1/items").header("Authorization", f"Bearer {token}").send()
    # if not response.is_success:
    #     raise sluice.Retryable(f"API answered {response.status}")
    # data = response.json()

    # The key the host gives this event (the same on every retry of it).
    # key = sluice.idempotency_key()

    sluice.publish_json(f"{event.subject}.seen", value)  # sent only if handle returns
