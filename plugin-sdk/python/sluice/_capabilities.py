"""Contract 0.2.0 capabilities: config, state, request and the idempotency key.

Each helper mirrors the Rust SDK (``plugin-sdk/src/lib.rs``); a refusal raises
:class:`Retryable` or :class:`Permanent` exactly where the Rust SDK's ``?``
would give a retryable or permanent ``HandlerError``, so leaving it uncaught
fails the event the same way.
"""

from typing import Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union

from ._contract import Err, bindings, capabilities
from ._errors import Permanent, Retryable

_current_key: Optional[str] = None


def set_current_key(key: Optional[str]) -> None:
    """Called by the entry point before each event (not part of the API)."""
    global _current_key
    _current_key = key


def idempotency_key() -> Optional[str]:
    """The idempotency key of the event being handled; ``None`` outside one."""
    return _current_key


def _kind(err) -> Tuple[str, str]:
    """``("not-granted", detail)`` from a generated variant case."""
    name = type(err).__name__.split("_", 1)[-1]
    return "-".join(w.lower() for w in _split_camel(name)), str(err.value)


def _split_camel(name: str) -> List[str]:
    words, cur = [], ""
    for ch in name:
        if ch.isupper() and cur:
            words.append(cur)
            cur = ""
        cur += ch
    return words + [cur] if cur else words


class StateError(Exception):
    """Mixin carrying ``kind`` (``not-granted``, ``invalid-key``, ``limit-exceeded``,
    ``unavailable``) and ``detail`` of a state refusal."""


class StateUnavailable(Retryable, StateError):
    """The state store could not be reached: retry the event later."""


class StateRefused(Permanent, StateError):
    """The state call is not allowed (not granted, bad key, limit): permanent."""


def _state_error(err) -> Exception:
    kind, detail = _kind(err)
    prefix = {
        "unavailable": "state unavailable",
        "not-granted": "state not granted",
        "invalid-key": "invalid state key",
        "limit-exceeded": "state limit exceeded",
    }.get(kind, "state refused")
    exc = (StateUnavailable if kind == "unavailable" else StateRefused)(f"{prefix}: {detail}")
    exc.kind, exc.detail = kind, detail
    return exc


class config:  # noqa: N801 - a namespace, used as ``sluice.config.get``
    """The plugin's configuration: an operator secret (``plugin_secrets``), else
    the operator's value (``plugin_config``), else the manifest's ``[config]``."""

    @staticmethod
    def get(key: str) -> Optional[str]:
        """The value of ``key`` or ``None`` when the manifest does not set it."""
        cfg, _, _ = capabilities()
        return cfg.get(key)

    @staticmethod
    def require(key: str) -> str:
        """The value of ``key``; :class:`Permanent` naming the key when unset."""
        value = config.get(key)
        if value is None:
            raise Permanent(
                f"configuration key `{key}` is not set: add it to the manifest's [config]"
                " or the operator's plugin_config / plugin_secrets"
            )
        return value


class Entry(NamedTuple):
    """A stored value and the revision to pass to :func:`state.cas`."""

    value: bytes
    revision: int


def _bytes(value: "bytes | str") -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class state:  # noqa: N801 - a namespace, used as ``sluice.state.get``
    """The plugin's key/value state (granted by the manifest's ``state``)."""

    @staticmethod
    def get(key: str) -> Optional[Entry]:
        """The :class:`Entry` under ``key`` or ``None``."""
        _, st, _ = capabilities()
        try:
            e = st.get(key)
        except Err as err:
            raise _state_error(err.value) from None
        return None if e is None else Entry(bytes(e.value), e.revision)

    @staticmethod
    def set(key: str, value: "bytes | str", ttl_ms: Optional[int] = None) -> None:
        """Store ``value`` under ``key`` (expiring after ``ttl_ms`` if given)."""
        _, st, _ = capabilities()
        try:
            st.set(key, _bytes(value), ttl_ms)
        except Err as err:
            raise _state_error(err.value) from None

    @staticmethod
    def cas(key: str, revision: int, value: "bytes | str", ttl_ms: Optional[int] = None) -> None:
        """Store ``value`` only if ``key`` is still at ``revision`` (0: absent)."""
        _, st, _ = capabilities()
        try:
            st.compare_and_swap(key, revision, _bytes(value), ttl_ms)
        except Err as err:
            raise _state_error(err.value) from None

    @staticmethod
    def delete(key: str) -> None:
        """Remove ``key``."""
        _, st, _ = capabilities()
        try:
            st.delete(key)
        except Err as err:
            raise _state_error(err.value) from None

    @staticmethod
    def list_keys(prefix: str = "") -> List[str]:
        """The keys starting with ``prefix``."""
        _, st, _ = capabilities()
        try:
            return list(st.list_keys(prefix))
        except Err as err:
            raise _state_error(err.value) from None


class Response(NamedTuple):
    """The answer to :func:`request`."""

    payload: bytes
    headers: List[Tuple[str, str]]


class RequestFailed(Retryable):
    """Nobody answered in time or the connection failed: retryable."""


class RequestRefused(Permanent):
    """The request is not allowed (not granted, bad subject, limit): permanent."""


Headers = Optional[Union[Mapping[str, str], Iterable[Tuple[str, str]]]]


def request(
    subject: str, payload: "bytes | str", timeout: Optional[float] = None, headers: Headers = None
) -> Response:
    """Send ``payload`` to ``subject`` (granted by the manifest's ``request``
    list) and wait for the first answer; ``timeout`` in seconds, at most the
    attempt's time limit. Sent at once, not at commit."""
    types, _, _ = bindings()
    _, _, req = capabilities()
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    wit_headers = [types.Header(str(n), str(v)) for n, v in pairs]
    timeout_ms = None if timeout is None else max(0, int(timeout * 1000))
    try:
        r = req.request(subject, _bytes(payload), wit_headers, timeout_ms)
    except Err as err:
        kind, detail = _kind(err.value)
        if kind in ("no-responders", "timed-out", "unavailable"):
            exc: Exception = RequestFailed(f"request failed: {detail}")
        else:
            exc = RequestRefused(f"request refused: {detail}")
        exc.kind, exc.detail = kind, detail
        raise exc from None
    return Response(bytes(r.payload), [(h.name, h.value) for h in r.headers])
