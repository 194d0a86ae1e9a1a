"""The event a handler receives: the contract's record plus helpers."""

from dataclasses import dataclass
from typing import Any, List, Optional

from ._errors import Permanent
from ._json import loads


@dataclass(frozen=True)
class Header:
    """One NATS header. Names are case-sensitive and may repeat."""

    name: str
    value: str


@dataclass(frozen=True)
class Delivery:
    """Where the event came from (see ``wit/types.wit``)."""

    stream: Optional[str]
    sequence: Optional[int]
    published_at_ms: Optional[int]
    reply_to: Optional[str]


@dataclass(frozen=True)
class Event:
    """One event routed to the plugin."""

    subject: str
    payload: bytes
    headers: List[Header]
    idempotency_key: str
    attempt: int
    delivery: Delivery

    @staticmethod
    def from_wit(event: Any) -> "Event":
        """Copy the generated binding record into this class."""
        d = event.delivery
        return Event(
            subject=event.subject,
            payload=bytes(event.payload),
            headers=[Header(h.name, h.value) for h in event.headers],
            idempotency_key=event.idempotency_key,
            attempt=event.attempt,
            delivery=Delivery(d.stream, d.sequence, d.published_at_ms, d.reply_to),
        )

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-sensitive), or ``None``."""
        for h in self.headers:
            if h.name == name:
                return h.value
        return None

    def header_all(self, name: str) -> List[str]:
        """Every value of header ``name``, in order."""
        return [h.value for h in self.headers if h.name == name]

    def text(self) -> str:
        """The payload as UTF-8 text; raises :class:`Permanent` if it is not."""
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Permanent(f"payload is not UTF-8: {e}") from None

    def json(self) -> Any:
        """The payload parsed as JSON; raises :class:`Permanent` if it is not."""
        try:
            return loads(self.payload)
        except ValueError as e:
            raise Permanent(f"payload is not valid JSON: {e}") from None
