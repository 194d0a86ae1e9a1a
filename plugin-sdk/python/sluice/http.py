"""Outbound HTTP over ``wasi:http/outgoing-handler`` (contract 0.2.0).

The Python twin of the Rust SDK's ``sluice_sdk::http``
(``plugin-sdk/src/http.rs``): plain blocking helpers that build a request,
send it and return the whole response. The host lets a request through only
to an origin (scheme, host, port) the manifest's ``http`` list grants and the
operator allows, never to a private or loopback address unless the operator
says so, within the attempt's time limit, a response-size limit and a
per-event request count. A request is sent at once (the plugin needs the
answer now), so a retried event sends it again: every request carries the
event's idempotency key as an ``Idempotency-Key`` header by default.

::

    import sluice
    from sluice import http

    def handle(event):
        url = sluice.config.require("url")
        response = http.post_json(url, event.json())   # Idempotency-Key: <the event's key>
        if response.is_success:
            sluice.publish("charges.done", response.body)
        elif response.status >= 500:
            raise sluice.Retryable(f"API answered {response.status}")
        else:
            raise sluice.Permanent(f"API refused: {response.status} {response.text()}")

A failed request raises :class:`HttpError`: an :class:`HttpRetryable` (a
:class:`sluice.Retryable`) for a timeout or a transport failure, an
:class:`HttpPermanent` (a :class:`sluice.Permanent`) when the host refused
it, it is invalid, or the response is too large or undecodable; so leaving
it uncaught fails the event exactly as ``?`` does in the Rust SDK. An HTTP
*status* is not an error: check :attr:`Response.status` yourself.
"""

from typing import Any, Iterable, List, Mapping, Optional, Tuple, Union

from . import _capabilities
from ._contract import Err, http_bindings
from ._errors import Permanent, Retryable
from ._json import dumps, loads

__all__ = [
    "IDEMPOTENCY_KEY",
    "HttpError",
    "HttpPermanent",
    "HttpRetryable",
    "Request",
    "Response",
    "get",
    "post_json",
]

#: The header carrying the event's idempotency key.
IDEMPOTENCY_KEY = "Idempotency-Key"

_WRITE_CHUNK = 4096
_READ_CHUNK = 64 * 1024

_KINDS = {
    "refused": "HTTP request refused",
    "invalid": "invalid HTTP request",
    "timeout": "HTTP request timed out",
    "too-large": "HTTP response too large",
    "transport": "HTTP request failed",
    "decode": "cannot decode HTTP response",
}

#: The kinds a retry of the event could fix (as ``HttpError::is_retryable``).
RETRYABLE_KINDS = ("timeout", "transport")


class HttpError(Exception):
    """Why a request got no (usable) response.

    ``kind`` is ``"refused"`` (the host refused it: origin not granted,
    private address, per-event request limit), ``"invalid"`` (URL, header or
    method), ``"timeout"``, ``"too-large"`` (response over the plugin's
    limit), ``"transport"`` (DNS, connection, TLS, protocol) or ``"decode"``
    (body not UTF-8 / not JSON); ``detail`` the explanation and ``message``
    the whole sentence (``"HTTP request refused: ..."``, the Rust SDK's text).
    Raised as :class:`HttpRetryable` or :class:`HttpPermanent`.
    """

    def __init__(self, kind: str, detail: str):
        self.kind = kind
        self.detail = str(detail)
        self.message = f"{_KINDS.get(kind, 'HTTP request failed')}: {self.detail}"
        self.retry_after_ms = None
        Exception.__init__(self, self.message)

    @property
    def is_retryable(self) -> bool:
        """Whether a retry of the event could succeed (a timeout or a transport failure)."""
        return self.kind in RETRYABLE_KINDS


class HttpRetryable(HttpError, Retryable):
    """A timeout or a transport failure: uncaught, the event is retried."""


class HttpPermanent(HttpError, Permanent):
    """Refused by the host, invalid, too large or undecodable: uncaught, the
    event is dead-lettered (a retry would fail again)."""


def http_error(kind: str, detail: str) -> HttpError:
    """The :class:`HttpError` of ``kind``, retryable or permanent as the Rust SDK classifies it."""
    return (HttpRetryable if kind in RETRYABLE_KINDS else HttpPermanent)(kind, detail)


class Response:
    """A complete response: ``status``, ``headers`` (``(name, value)`` pairs in
    the order received, names in lower case) and ``body`` (bytes)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Response(status={self.status}, headers={self.headers!r}, body={len(self.body)} bytes)"

    @property
    def is_success(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        lower = name.lower()
        for n, v in self.headers:
            if n.lower() == lower:
                return v
        return None

    def text(self) -> str:
        """The body as UTF-8 text; :class:`HttpPermanent` (kind ``decode``) if it is not."""
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise http_error("decode", f"body is not UTF-8: {e}") from None

    def json(self) -> Any:
        """The body parsed as JSON; :class:`HttpPermanent` (kind ``decode``) if it is not."""
        try:
            return loads(self.body)
        except ValueError as e:  # includes UnicodeDecodeError and JSONDecodeError
            raise http_error("decode", f"body is not the expected JSON: {e}") from None


_NO_JSON = object()

Headers = Optional[Union[Mapping[str, str], Iterable[Tuple[str, str]]]]


class Request:
    """A request being built; :meth:`send` sends it. Every setter returns the
    request, so calls chain; the keyword arguments are the same settings::

        response = (http.Request("PUT", "https://api.example.com/items/7")
                    .header("Authorization", f"Bearer {token}")
                    .json(item)
                    .send())
        response = http.Request("DELETE", url, headers={"X-Why": "gone"}, timeout=2.0).send()
    """

    def __init__(
        self,
        method: str,
        url: str,
        *,
        headers: Headers = None,
        body: "bytes | str | None" = None,
        json: Any = _NO_JSON,
        timeout: Optional[float] = None,
        idempotency_key: bool = True,
    ):
        self.method = str(method)
        self.url = str(url)
        self.headers: List[Tuple[str, str]] = []
        self._body = b""
        self._idempotency_key = bool(idempotency_key)
        self._timeout: Optional[float] = None
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        for name, value in pairs:
            self.header(name, value)
        if body is not None:
            self.body(body)
        if json is not _NO_JSON:
            self.json(json)
        if timeout is not None:
            self.timeout(timeout)

    def header(self, name: str, value: str) -> "Request":
        """Add a header (names may repeat). An explicit ``Idempotency-Key``
        replaces the event's."""
        self.headers.append((str(name), str(value)))
        return self

    def body(self, body: "bytes | str") -> "Request":
        """Set the body (a string is sent as UTF-8)."""
        self._body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        return self

    def json(self, value: Any) -> "Request":
        """Set the body to ``value`` as JSON (the Rust SDK's bytes), with
        ``Content-Type: application/json`` unless a content type is set."""
        try:
            self._body = dumps(value)
        except (TypeError, ValueError) as e:
            raise http_error("invalid", f"cannot encode the JSON body: {e}") from None
        if not self._has_header("content-type"):
            self.headers.append(("Content-Type", "application/json"))
        return self

    def without_idempotency_key(self) -> "Request":
        """Do not send the event's idempotency key."""
        self._idempotency_key = False
        return self

    def timeout(self, seconds: float) -> "Request":
        """Give up after ``seconds`` (the attempt's time limit applies anyway)."""
        if seconds < 0:
            raise ValueError(f"timeout must not be negative, got {seconds!r}")
        self._timeout = float(seconds)
        return self

    def _has_header(self, name: str) -> bool:
        lower = name.lower()
        return any(n.lower() == lower for n, _ in self.headers)

    def send(self) -> Response:
        """Send the request and read the whole response. Raises
        :class:`HttpError` when there is no response; any status is a response."""
        headers = list(self.headers)
        if self._idempotency_key and not self._has_header(IDEMPOTENCY_KEY):
            key = _capabilities.idempotency_key()
            if key:
                headers.append((IDEMPOTENCY_KEY, key))
        return _send(self.method, self.url, headers, self._body, self._timeout)


def get(url: str, *, headers: Headers = None, timeout: Optional[float] = None) -> Response:
    """``GET url``."""
    return Request("GET", url, headers=headers, timeout=timeout).send()


def post_json(url: str, value: Any, *, headers: Headers = None, timeout: Optional[float] = None) -> Response:
    """``POST url`` with ``value`` as the JSON body."""
    return Request("POST", url, headers=headers, json=value, timeout=timeout).send()


def split_url(url: str) -> Tuple[str, str, str]:
    """``url`` split into scheme (``http``/``https``), authority and path with
    query (the fragment dropped); :class:`HttpPermanent` (``invalid``) if it
    is not an http(s) URL with a host."""

    def invalid(why: str) -> HttpError:
        return http_error("invalid", f"`{url}` is not a valid URL: {why}")

    scheme, sep, rest = url.partition("://")
    if not sep:
        raise invalid("write scheme://host[:port]/path")
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise invalid("the scheme must be http or https")
    end = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if i != -1 and i < end:
            end = i
    authority, path = rest[:end], rest[end:]
    if not authority:
        raise invalid("no host")
    if "@" in authority:
        raise invalid("credentials in the URL are not supported; send a header")
    return scheme, authority, path.split("#", 1)[0]


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _drop(resource: Any) -> None:
    """Release a wasi resource now (children before parents, as the host wants)."""
    if resource is not None:
        resource.__exit__(None, None, None)


def _send(method: str, url: str, headers: List[Tuple[str, str]], body: bytes, timeout: Optional[float]) -> Response:
    wt, outgoing_handler, _ = http_bindings()
    scheme, authority, path = split_url(url)
    fields = wt.Fields()
    try:
        for name, value in headers:
            try:
                fields.append(name, value.encode("utf-8"))
            except Err as e:
                raise http_error("invalid", f"header `{name}`: HeaderError::{_variant_name(e.value, 'HeaderError_')}") from None
        if body and not any(n.lower() == "content-length" for n, _ in headers):
            try:
                fields.append("content-length", str(len(body)).encode("ascii"))
            except Err as e:
                raise http_error("invalid", f"content-length: HeaderError::{_variant_name(e.value, 'HeaderError_')}") from None
    except HttpError:
        _drop(fields)
        raise
    outgoing = wt.OutgoingRequest(fields)  # takes the fields
    upper = method.upper()
    wit_method = getattr(wt, f"Method_{upper.capitalize()}")() if upper in _METHODS else wt.Method_Other(method)
    out_body = None
    try:
        for what, setter, value in (
            ("the method", outgoing.set_method, wit_method),
            ("the scheme", outgoing.set_scheme, wt.Scheme_Https() if scheme == "https" else wt.Scheme_Http()),
            ("the host and port", outgoing.set_authority, authority),
            ("the path", outgoing.set_path_with_query, path or "/"),
        ):
            try:
                setter(value)
            except Err:
                raise http_error("invalid", f"{what} of `{url}`") from None
        try:
            out_body = outgoing.body()
        except Err:
            raise http_error("invalid", "the request body is already taken") from None
    except HttpError:
        _drop(out_body)
        _drop(outgoing)
        raise
    options = None
    if timeout is not None:
        options = wt.RequestOptions()
        nanos = min(int(timeout * 1_000_000_000), 2**64 - 1)
        # Ignored when the host does not support one of them; the attempt's
        # time limit applies anyway.
        for setter in (options.set_connect_timeout, options.set_first_byte_timeout, options.set_between_bytes_timeout):
            try:
                setter(nanos)
            except Err:
                pass
    try:
        pending = outgoing_handler.handle(outgoing, options)  # takes the request and options
    except Err as e:
        _drop(out_body)
        raise _error_of(url, e.value) from None
    try:
        _write_body(out_body, body)
        try:
            wt.OutgoingBody.finish(out_body, None)
        except Err:
            pass  # a failed write shows as the response's error below
        out_body = None
        incoming = _await_response(url, pending)
    finally:
        _drop(out_body)
    try:
        return _read_response(url, incoming)
    finally:
        _drop(incoming)
        _drop(pending)


def _write_body(out_body: Any, data: bytes) -> None:
    if not data:
        return
    try:
        stream = out_body.write()
    except Err:
        return
    try:
        for i in range(0, len(data), _WRITE_CHUNK):
            try:
                stream.blocking_write_and_flush(data[i : i + _WRITE_CHUNK])
            except Err:
                break
    finally:
        _drop(stream)


def _await_response(url: str, pending: Any) -> Any:
    while True:
        got = pending.get()
        if got is None:
            pollable = pending.subscribe()
            try:
                pollable.block()
            finally:
                _drop(pollable)
            continue
        if isinstance(got, Err):
            _drop(pending)
            raise http_error("transport", f"the response to `{url}` was already taken")
        inner = got.value
        if isinstance(inner, Err):
            _drop(pending)
            raise _error_of(url, inner.value)
        return inner.value


def _read_response(url: str, incoming: Any) -> Response:
    wt, _, streams = http_bindings()
    status = incoming.status()
    fields = incoming.headers()
    try:
        headers = [(name, bytes(value).decode("utf-8", "replace")) for name, value in fields.entries()]
    finally:
        _drop(fields)
    try:
        body = incoming.consume()
    except Err:
        raise http_error("transport", f"the body of `{url}` was already taken") from None
    try:
        try:
            stream = body.stream()
        except Err:
            raise http_error("transport", f"the body of `{url}` was already taken") from None
        chunks = []
        try:
            while True:
                try:
                    chunks.append(bytes(stream.blocking_read(_READ_CHUNK)))
                except Err as e:
                    if isinstance(e.value, streams.StreamError_Closed):
                        break
                    raise _stream_failure(url, e.value.value) from None
        finally:
            _drop(stream)
        trailers = wt.IncomingBody.finish(body)  # takes the body
        body = None
        _drop(trailers)
    finally:
        _drop(body)
    return Response(status, headers, b"".join(chunks))


def _stream_failure(url: str, io_error: Any) -> HttpError:
    wt, _, _ = http_bindings()
    try:
        code = wt.http_error_code(io_error)
        if code is not None:
            return _error_of(url, code)
        return http_error("transport", f"reading the body of `{url}` failed: {io_error.to_debug_string()}")
    finally:
        _drop(io_error)


def _variant_name(value: Any, prefix: str) -> str:
    name = type(value).__name__
    return name[len(prefix) :] if name.startswith(prefix) else name


def _debug(code: Any) -> str:
    """The Rust SDK's ``{code:?}`` of an error code (exact for the cases without a payload)."""
    name = f"ErrorCode::{_variant_name(code, 'ErrorCode_')}"
    if hasattr(code, "value"):
        return f"{name}({code.value!r})"
    return name


def _error_of(url: str, code: Any) -> HttpError:
    """A readable error for what ``wasi:http`` reported about ``url`` (the Rust SDK's texts)."""
    name = _variant_name(code, "ErrorCode_")
    if name == "HttpRequestDenied":
        return http_error(
            "refused",
            f"`{url}`: the host does not grant this origin to the plugin (the manifest's `http` list and the operator's `http_allow` decide)",
        )
    if name == "DestinationIpProhibited":
        return http_error(
            "refused",
            f"`{url}` resolves to a private, loopback or link-local address, which the operator does not allow (`http_allow_private`)",
        )
    if name == "ConnectionLimitReached":
        return http_error(
            "refused", f"`{url}`: the plugin's per-event HTTP request limit is reached (`max_http_requests`)"
        )
    if name == "HttpResponseBodySize":
        limit = code.value
        if limit is not None:
            return http_error(
                "too-large",
                f"the response of `{url}` is larger than the plugin's limit of {limit} bytes (`max_http_response`)",
            )
        return http_error("too-large", f"the response of `{url}` is larger than the plugin's limit")
    if name in ("ConnectionTimeout", "ConnectionReadTimeout", "ConnectionWriteTimeout", "HttpResponseTimeout", "DnsTimeout"):
        return http_error(
            "timeout", f"`{url}` did not answer in time (the attempt's time limit cuts every request): {_debug(code)}"
        )
    if name in ("HttpRequestUriInvalid", "HttpRequestMethodInvalid"):
        return http_error("invalid", f"`{url}`: {_debug(code)}")
    if name == "InternalError" and code.value is not None:
        return http_error("transport", f"`{url}`: {code.value}")
    return http_error("transport", f"`{url}`: {_debug(code)}")
