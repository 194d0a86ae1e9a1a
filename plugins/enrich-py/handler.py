"""`enrich` in Python: parses a JSON object, adds fields, and publishes the
result to `<prefix>.enriched.<rest>` (`orders.created` -> `orders.enriched.created`).

The same input gives the same output bytes as the Rust plugin (plugins/enrich):
the SDK's publish_json writes JSON the way serde_json does.
"""

import sluice


def _number(value):
    # serde_json's as_f64: any JSON number, never a boolean.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def handle(event: sluice.Event) -> None:
    order = event.json()
    if not isinstance(order, dict):
        raise sluice.Permanent("expected a JSON object")
    quantity, price = _number(order.get("quantity")), _number(order.get("unit_price"))
    order["total"] = quantity * price if quantity is not None and price is not None else None
    order["enriched_by"] = "sluice/enrich"
    order["source_subject"] = event.subject
    order["idempotency_key"] = event.idempotency_key

    prefix, dot, rest = event.subject.partition(".")
    derived = f"{prefix}.enriched.{rest}" if dot else f"{event.subject}.enriched"
    sluice.publish_json(derived, order)
    sluice.info(f"enriched {event.subject} -> {derived}")
