"""The two failure kinds a handler raises, as the contract defines them."""


class Retryable(Exception):
    """A transient failure: the host retries the event per its retry policy.

    ``retry_after_ms`` suggests a delay before the next attempt; the host
    honours it within the policy's bounds.
    """

    def __init__(self, message: str, retry_after_ms: "int | None" = None):
        super().__init__(message)
        self.message = str(message)
        if retry_after_ms is not None and (
            not isinstance(retry_after_ms, int) or retry_after_ms < 0
        ):
            raise ValueError(f"retry_after_ms must be a non-negative int, got {retry_after_ms!r}")
        self.retry_after_ms = retry_after_ms


class Permanent(Exception):
    """The event can never succeed: dead-letter it without retrying."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = str(message)


class PublishRefused(Retryable):
    """The host refused a publish (not granted, invalid subject, limit reached).

    A subclass of :class:`Retryable`, so leaving it uncaught fails the event as
    retryable, like ``?`` on a refused publish in the Rust SDK. ``kind`` is
    ``"not-granted"``, ``"invalid-subject"`` or ``"limit-exceeded"``.
    """

    def __init__(self, kind: str, detail: str):
        prefix = {
            "not-granted": "publish not granted",
            "invalid-subject": "invalid publish",
            "limit-exceeded": "publish limit exceeded",
        }.get(kind, "publish refused")
        super().__init__(f"{prefix}: {detail}")
        self.kind = kind
        self.detail = detail
