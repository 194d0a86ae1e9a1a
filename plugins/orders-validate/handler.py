"""`orders-validate`: the first step of the order saga (examples/orders), in Python.

Consumes `orders.placed`. A well-formed order gets its total priced from the
catalog and goes on as `orders.validated`; a malformed one ends the saga as
`orders.rejected` with the reasons (a business outcome, not a failure: the
event succeeds). A payload that is not JSON at all is a permanent error and
is dead-lettered.

SKUs are matched case-insensitively (`mug-1` is `MUG-1`), and passed on as
the customer wrote them: the inventory step must cope (v1 does not: that is
the bug the demo fixes by hot-deploying v2).
"""

import sluice

# Prices in cents. SKUs are case-insensitive.
CATALOG = {"MUG-1": 1200, "TEE-1": 2500, "POSTER-1": 900}


def problems(order):
    """What is wrong with `order`, as a list of sentences (empty: valid)."""
    found = []
    if not isinstance(order.get("id"), str) or not order["id"]:
        found.append("`id` must be a non-empty string")
    items = order.get("items")
    if not isinstance(items, list) or not items:
        found.append("`items` must be a non-empty list")
        items = []
    for n, item in enumerate(items):
        sku = item.get("sku") if isinstance(item, dict) else None
        qty = item.get("qty") if isinstance(item, dict) else None
        if not isinstance(sku, str) or sku.strip().upper() not in CATALOG:
            found.append(f"item {n}: unknown sku {sku!r}")
        if not isinstance(qty, int) or isinstance(qty, bool) or not 1 <= qty <= 100:
            found.append(f"item {n}: qty must be a whole number from 1 to 100")
    if not isinstance(order.get("card"), str) or len(order["card"].replace(" ", "")) < 12:
        found.append("`card` must be a card number")
    country = order.get("country")
    if not isinstance(country, str) or len(country) != 2:
        found.append("`country` must be a two-letter code")
    return found


def handle(event: sluice.Event) -> None:
    order = event.json()  # not JSON: Permanent, dead-lettered
    if not isinstance(order, dict):
        raise sluice.Permanent("an order must be a JSON object")
    wrong = problems(order)
    if wrong:
        order["reason"] = "; ".join(wrong)
        sluice.publish_json("orders.rejected", order)
        sluice.info(f"order {order.get('id')!r} rejected: {order['reason']}")
        return
    order["amount_cents"] = sum(CATALOG[i["sku"].strip().upper()] * i["qty"] for i in order["items"])
    sluice.publish_json("orders.validated", order)
    sluice.info(f"order {order['id']} valid, {order['amount_cents']} cents")
