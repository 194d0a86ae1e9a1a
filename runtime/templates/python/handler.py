"""`{{name}}`: a sluice consumer plugin. Parses the payload as JSON, logs it,
and publishes it to `<subject>.seen`. Edit `handle`; build with `make`."""

import sluice


def handle(event: sluice.Event) -> None:
    value = event.json()  # bad JSON -> sluice.Permanent
    if value is None:
        raise sluice.Permanent("expected a JSON value, got null")
    sluice.info(f"{{name}} got an event on {event.subject}")
    sluice.publish_json(f"{event.subject}.seen", value)  # sent only if handle returns
