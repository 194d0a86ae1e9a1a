"""sluice: write a sluice consumer plugin in Python as one function.

A plugin is a module ``handler.py`` with::

    import sluice

    def handle(event: sluice.Event) -> None:
        order = event.json()                    # bad JSON -> Permanent
        if "id" not in order:
            raise sluice.Permanent("order has no id")
        sluice.info(f"order {order['id']} on {event.subject}")
        sluice.publish("orders.accepted", str(order["id"]))  # sent only if handle returns

Return normally and the event is done: its publishes are sent and it is
acknowledged. Raise :class:`Retryable` and the host retries it later
(``event.attempt`` grows); raise :class:`Permanent` and it is dead-lettered
without retry. Any other exception traps the instance: the host counts it as a
retryable failure and records its traceback (stderr) in the dead letter.

``plugin-sdk/python/build.sh DIR`` turns the folder into ``NAME.wasm`` with
componentize-py; this package is the only import it adds. Contract 0.2.0
capabilities: ``config``, ``state``, ``request``, ``idempotency_key()`` and
outbound HTTP (``sluice.http``: ``get``, ``post_json``, ``Request``). The helpers mirror
the Rust SDK (``plugin-sdk/src/lib.rs``) and ``publish_json`` writes the same
bytes as the Rust SDK's ``publish_json`` of a ``serde_json::Value``.
"""

from ._capabilities import (
    Entry,
    RequestFailed,
    RequestRefused,
    Response,
    StateRefused,
    StateUnavailable,
    config,
    idempotency_key,
    request,
    state,
)
from ._contract import LEVELS
from ._errors import Permanent, PublishRefused, Retryable
from ._event import Delivery, Event, Header
from ._json import dumps as json_dumps
from ._host import debug, error, info, log, publish, publish_json, reply, trace, warn
from . import http
from .http import HttpError, HttpPermanent, HttpRetryable

__all__ = [
    "Delivery",
    "Entry",
    "HttpError",
    "HttpPermanent",
    "HttpRetryable",
    "RequestFailed",
    "RequestRefused",
    "Response",
    "StateRefused",
    "StateUnavailable",
    "config",
    "http",
    "idempotency_key",
    "request",
    "state",
    "Event",
    "Header",
    "LEVELS",
    "Permanent",
    "PublishRefused",
    "Retryable",
    "debug",
    "error",
    "info",
    "json_dumps",
    "log",
    "publish",
    "publish_json",
    "reply",
    "trace",
    "warn",
]
