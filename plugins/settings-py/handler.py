"""settings-py: the Python twin of plugins/settings (the configuration
example). The payload lists keys (comma-separated); the plugin reads each with
``config.get`` and publishes ``{"key": value-or-null, ...}`` to
``settings.out`` (the Rust plugin's JSON bytes). It logs how many keys it
read, never their values (a value may be a secret).
"""

import sluice


def handle(event: sluice.Event) -> None:
    keys = [k for k in event.text().split(",") if k]
    values = {key: sluice.config.get(key) for key in keys}
    sluice.info(f"settings: read {len(values)} keys")
    sluice.publish_json("settings.out", values)
