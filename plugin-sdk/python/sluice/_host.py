"""Calls into the host: publishing (the outbox) and logging."""

from typing import Any, Iterable, Mapping, Optional, Tuple, Union

from ._contract import LEVELS, Err, bindings
from ._errors import Permanent, PublishRefused
from ._json import dumps

Headers = Optional[Union[Mapping[str, str], Iterable[Tuple[str, str]]]]

_ERROR_KINDS = {
    "PublishError_NotGranted": "not-granted",
    "PublishError_InvalidSubject": "invalid-subject",
    "PublishError_LimitExceeded": "limit-exceeded",
}


def publish(subject: str, payload: "bytes | str", headers: Headers = None) -> None:
    """Queue a message for ``subject``; it is sent only if the handler returns.

    ``payload`` is bytes or text (sent as UTF-8); ``headers`` a mapping or a
    list of ``(name, value)`` pairs. Raises :class:`PublishRefused` (a
    :class:`Retryable`) when the host refuses the subject or a limit is reached.
    """
    types, _, publisher = bindings()
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    wit_headers = [types.Header(str(n), str(v)) for n, v in pairs]
    try:
        publisher.publish(subject, bytes(payload), wit_headers)
    except Err as e:
        refused = e.value
        raise PublishRefused(_ERROR_KINDS.get(type(refused).__name__, "refused"), refused.value) from None


def reply(event: Any, payload: "bytes | str") -> None:
    """Answer the request ``event`` carries: queue ``payload`` for its reply
    subject, sent (like every publish) only if the handler returns. No grant
    is needed. Raises :class:`Permanent` if the event is not a request."""
    to = event.delivery.reply_to
    if not to:
        raise Permanent("cannot reply: the event is not a request (it has no reply subject)")
    publish(to, payload)


def publish_json(subject: str, value: Any, headers: Headers = None) -> None:
    """Encode ``value`` as JSON (the bytes the Rust SDK writes) and publish it
    with ``Content-Type: application/json``."""
    try:
        body = dumps(value)
    except (TypeError, ValueError) as e:
        raise Permanent(f"cannot encode JSON: {e}") from None
    pairs = list(headers.items() if isinstance(headers, Mapping) else (headers or ()))
    publish(subject, body, [("Content-Type", "application/json"), *pairs])


def log(level: str, message: str, **fields: Any) -> None:
    """Emit a log record into the host log; ``fields`` become structured
    key/value pairs (values formatted with ``str``)."""
    types, logging, _ = bindings()
    try:
        wit_level = types.Level[level.upper()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}") from None
    logging.log(wit_level, str(message), [types.Field(k, str(v)) for k, v in fields.items()])


def trace(message: str, **fields: Any) -> None:
    """Log at trace level."""
    log("trace", message, **fields)


def debug(message: str, **fields: Any) -> None:
    """Log at debug level."""
    log("debug", message, **fields)


def info(message: str, **fields: Any) -> None:
    """Log at info level."""
    log("info", message, **fields)


def warn(message: str, **fields: Any) -> None:
    """Log at warn level."""
    log("warn", message, **fields)


def error(message: str, **fields: Any) -> None:
    """Log at error level."""
    log("error", message, **fields)
