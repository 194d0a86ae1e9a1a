//! Outbound HTTP over `wasi:http/outgoing-handler` (contract 0.2.0).
//!
//! Plain blocking helpers: build a request, send it, get the whole response.
//! The host lets a request through only to an origin (scheme, host, port)
//! the manifest's `http` list grants and the operator allows, never to a
//! private or loopback address unless the operator says so, within the
//! attempt's time limit, a response-size limit and a per-event request
//! count. Unlike publishes, a request is sent at once (the plugin needs the
//! answer now), so a retried event sends it again: every request carries the
//! event's idempotency key as an `Idempotency-Key` header by default, so a
//! well-behaved API applies a retried charge once.
//!
//! ```ignore
//! use sluice_sdk::{http, Event, HandlerError, HandlerResult};
//!
//! fn handle(event: Event) -> HandlerResult {
//!     let url = sluice_sdk::config::require("url")?;
//!     let order: serde_json::Value = event.json()?;
//!     let response = http::post_json(&url, &order)?; // Idempotency-Key: <the event's key>
//!     match response.status {
//!         200..=299 => sluice_sdk::publish("charges.done", response.body)?,
//!         500..=599 => return Err(HandlerError::retryable(format!("API answered {}", response.status))),
//!         status => return Err(HandlerError::permanent(format!("API refused: {status} {}", response.text()?))),
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Any guest HTTP library built on `wasi:http` works the same way (same
//! grants and limits); only these helpers add the idempotency header.

use std::fmt;
use std::time::Duration;

use crate::__private::wasi::http::outgoing_handler;
use crate::__private::wasi::http::types as wasi;
use crate::__private::wasi::io::streams::StreamError;
use crate::HandlerError;

/// The header carrying the event's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Bytes written to the request body per call.
const WRITE_CHUNK: usize = 4096;
/// Bytes asked for per read of the response body.
const READ_CHUNK: u64 = 64 * 1024;

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// Any other method, as written.
    Other(String),
}

impl From<&str> for Method {
    /// `"GET"`, `"post"`, ... (case-insensitive); anything else is [`Method::Other`].
    fn from(name: &str) -> Method {
        match name.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other(name.to_string()),
        }
    }
}

impl Method {
    fn to_wasi(&self) -> wasi::Method {
        match self {
            Method::Get => wasi::Method::Get,
            Method::Head => wasi::Method::Head,
            Method::Post => wasi::Method::Post,
            Method::Put => wasi::Method::Put,
            Method::Patch => wasi::Method::Patch,
            Method::Delete => wasi::Method::Delete,
            Method::Options => wasi::Method::Options,
            Method::Other(m) => wasi::Method::Other(m.clone()),
        }
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused the request: the origin is not granted, the address
    /// is private, or the per-event request limit is reached. A retry
    /// cannot help.
    Refused(String),
    /// The URL, a header or the method is not valid.
    Invalid(String),
    /// No (complete) response within the attempt's time limit or the
    /// request's own timeout.
    Timeout(String),
    /// The response body is larger than the plugin's limit.
    TooLarge(String),
    /// DNS, connection, TLS or protocol failure.
    Transport(String),
    /// The response body is not what was asked for (not UTF-8, not the JSON).
    Decode(String),
}

impl HttpError {
    /// The explanation, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            HttpError::Refused(m)
            | HttpError::Invalid(m)
            | HttpError::Timeout(m)
            | HttpError::TooLarge(m)
            | HttpError::Transport(m)
            | HttpError::Decode(m) => m,
        }
    }

    /// Whether a retry of the event could succeed (a timeout or a transport
    /// failure); a refusal, an invalid request, an oversized or undecodable
    /// response would fail again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, HttpError::Timeout(_) | HttpError::Transport(_))
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            HttpError::Refused(_) => "HTTP request refused",
            HttpError::Invalid(_) => "invalid HTTP request",
            HttpError::Timeout(_) => "HTTP request timed out",
            HttpError::TooLarge(_) => "HTTP response too large",
            HttpError::Transport(_) => "HTTP request failed",
            HttpError::Decode(_) => "cannot decode HTTP response",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for HttpError {}

/// A failed request fails the event, so `?` works in handlers: retryable
/// when a retry could succeed (timeout, connection or protocol failure),
/// permanent otherwise (refused by the host, invalid, too large,
/// undecodable). An HTTP *status* is not an error: check
/// [`Response::status`] yourself.
impl From<HttpError> for HandlerError {
    fn from(e: HttpError) -> Self {
        if e.is_retryable() {
            HandlerError::retryable(e.to_string())
        } else {
            HandlerError::permanent(e.to_string())
        }
    }
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers as `(name, value)` in the order received (names in lower case).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, HttpError> {
        std::str::from_utf8(&self.body)
            .map_err(|e| HttpError::Decode(format!("body is not UTF-8: {e}")))
    }

    /// The body parsed as JSON.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::Decode(format!("body is not the expected JSON: {e}")))
    }
}

/// A request being built; [`send`](Request::send) sends it.
///
/// ```ignore
/// let response = sluice_sdk::http::Request::new("PUT", "https://api.example.com/items/7")
///     .header("Authorization", &format!("Bearer {token}"))
///     .json(&item)?
///     .send()?;
/// ```
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    idempotency_key: bool,
    timeout: Option<Duration>,
}

impl Request {
    /// A request with `method` (a [`Method`] or its name) to `url`
    /// (`http://` or `https://`).
    pub fn new(method: impl Into<Method>, url: impl Into<String>) -> Request {
        Request {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            idempotency_key: true,
            timeout: None,
        }
    }

    /// Add a header (names may repeat). An explicit `Idempotency-Key`
    /// replaces the event's.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Set the body to `value` as JSON, with `Content-Type: application/json`.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Result<Request, HttpError> {
        self.body = serde_json::to_vec(value)
            .map_err(|e| HttpError::Invalid(format!("cannot encode the JSON body: {e}")))?;
        if !self.has_header("content-type") {
            self.headers
                .push(("Content-Type".into(), "application/json".into()));
        }
        Ok(self)
    }

    /// Do not send the event's idempotency key.
    pub fn without_idempotency_key(mut self) -> Request {
        self.idempotency_key = false;
        self
    }

    /// Give up after `timeout` (the attempt's time limit applies anyway).
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Send the request and read the whole response.
    pub fn send(mut self) -> Result<Response, HttpError> {
        if self.idempotency_key && !self.has_header(IDEMPOTENCY_KEY) {
            if let Some(key) = crate::idempotency_key() {
                self.headers.push((IDEMPOTENCY_KEY.into(), key));
            }
        }
        send(self)
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::new(Method::Get, url).send()
}

/// `POST url` with `value` as the JSON body.
#[cfg(feature = "json")]
pub fn post_json<T: serde::Serialize + ?Sized>(
    url: &str,
    value: &T,
) -> Result<Response, HttpError> {
    Request::new(Method::Post, url).json(value)?.send()
}

/// `url` split into scheme, authority and path with query.
fn split_url(url: &str) -> Result<(wasi::Scheme, &str, &str), HttpError> {
    let invalid = |why: &str| HttpError::Invalid(format!("`{url}` is not a valid URL: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("write scheme://host[:port]/path"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => wasi::Scheme::Http,
        "https" => wasi::Scheme::Https,
        _ => return Err(invalid("the scheme must be http or https")),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(invalid("no host"));
    }
    if authority.contains('@') {
        return Err(invalid(
            "credentials in the URL are not supported; send a header",
        ));
    }
    let path = path.split('#').next().unwrap_or_default();
    Ok((scheme, authority, path))
}

fn send(request: Request) -> Result<Response, HttpError> {
    let url = request.url.as_str();
    let (scheme, authority, path) = split_url(url)?;
    let fields = wasi::Fields::new();
    for (name, value) in &request.headers {
        fields
            .append(name, value.as_bytes())
            .map_err(|e| HttpError::Invalid(format!("header `{name}`: {e:?}")))?;
    }
    if !request.body.is_empty() && !request.has_header("content-length") {
        let length = request.body.len().to_string();
        fields
            .append("content-length", length.as_bytes())
            .map_err(|e| HttpError::Invalid(format!("content-length: {e:?}")))?;
    }
    let outgoing = wasi::OutgoingRequest::new(fields);
    let invalid = |what: &str| HttpError::Invalid(format!("{what} of `{url}`"));
    outgoing
        .set_method(&request.method.to_wasi())
        .map_err(|()| invalid("the method"))?;
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("the scheme"))?;
    outgoing
        .set_authority(Some(authority))
        .map_err(|()| invalid("the host and port"))?;
    let path = if path.is_empty() { "/" } else { path };
    outgoing
        .set_path_with_query(Some(path))
        .map_err(|()| invalid("the path"))?;
    let body = outgoing
        .body()
        .map_err(|()| HttpError::Invalid("the request body is already taken".into()))?;
    let options = request.timeout.map(|t| {
        let options = wasi::RequestOptions::new();
        let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
        // Ignored when the host does not support one of them; the attempt's
        // time limit applies anyway.
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));
        options
    });
    let pending = outgoing_handler::handle(outgoing, options).map_err(|e| error_of(url, &e))?;
    write_body(&body, &request.body);
    // A failed write shows as the response's error below.
    let _ = wasi::OutgoingBody::finish(body, None);
    let incoming = loop {
        match pending.get() {
            Some(Ok(Ok(response))) => break response,
            Some(Ok(Err(e))) => return Err(error_of(url, &e)),
            Some(Err(())) => {
                return Err(HttpError::Transport(format!(
                    "the response to `{url}` was already taken"
                )));
            }
            None => pending.subscribe().block(),
        }
    };
    read_response(url, incoming)
}

fn write_body(body: &wasi::OutgoingBody, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let Ok(stream) = body.write() else {
        return;
    };
    for chunk in bytes.chunks(WRITE_CHUNK) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            break;
        }
    }
}

fn read_response(url: &str, incoming: wasi::IncomingResponse) -> Result<Response, HttpError> {
    let status = incoming.status();
    let headers = incoming
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let body = incoming
        .consume()
        .map_err(|()| HttpError::Transport(format!("the body of `{url}` was already taken")))?;
    let stream = body
        .stream()
        .map_err(|()| HttpError::Transport(format!("the body of `{url}` was already taken")))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(match wasi::http_error_code(&e) {
                    Some(code) => error_of(url, &code),
                    None => HttpError::Transport(format!(
                        "reading the body of `{url}` failed: {}",
                        e.to_debug_string()
                    )),
                });
            }
        }
    }
    drop(stream);
    let _ = wasi::IncomingBody::finish(body);
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}

/// A readable error for what `wasi:http` reported about `url`.
fn error_of(url: &str, code: &wasi::ErrorCode) -> HttpError {
    use wasi::ErrorCode as E;
    match code {
        E::HttpRequestDenied => HttpError::Refused(format!(
            "`{url}`: the host does not grant this origin to the plugin (the manifest's `http` list and the operator's `http_allow` decide)"
        )),
        E::DestinationIpProhibited => HttpError::Refused(format!(
            "`{url}` resolves to a private, loopback or link-local address, which the operator does not allow (`http_allow_private`)"
        )),
        E::ConnectionLimitReached => HttpError::Refused(format!(
            "`{url}`: the plugin's per-event HTTP request limit is reached (`max_http_requests`)"
        )),
        E::HttpResponseBodySize(limit) => HttpError::TooLarge(match limit {
            Some(limit) => format!(
                "the response of `{url}` is larger than the plugin's limit of {limit} bytes (`max_http_response`)"
            ),
            None => format!("the response of `{url}` is larger than the plugin's limit"),
        }),
        E::ConnectionTimeout
        | E::ConnectionReadTimeout
        | E::ConnectionWriteTimeout
        | E::HttpResponseTimeout
        | E::DnsTimeout => HttpError::Timeout(format!(
            "`{url}` did not answer in time (the attempt's time limit cuts every request): {code:?}"
        )),
        E::HttpRequestUriInvalid | E::HttpRequestMethodInvalid => {
            HttpError::Invalid(format!("`{url}`: {code:?}"))
        }
        E::InternalError(Some(message)) => HttpError::Transport(format!("`{url}`: {message}")),
        other => HttpError::Transport(format!("`{url}`: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let (scheme, authority, path) =
            split_url("https://api.example.com:8443/v1/x?y=1#f").unwrap();
        assert!(matches!(scheme, wasi::Scheme::Https));
        assert_eq!((authority, path), ("api.example.com:8443", "/v1/x?y=1"));
        let (_, authority, path) = split_url("http://127.0.0.1:9000").unwrap();
        assert_eq!((authority, path), ("127.0.0.1:9000", ""));
        assert!(split_url("ftp://x/").is_err());
        assert!(split_url("no-scheme").is_err());
        assert!(split_url("http:///path").is_err());
        assert!(split_url("http://user:pw@host/").is_err());
    }

    #[test]
    fn only_timeouts_and_transport_failures_are_retryable() {
        assert!(HttpError::Timeout("x".into()).is_retryable());
        assert!(HttpError::Transport("x".into()).is_retryable());
        assert!(!HttpError::Refused("x".into()).is_retryable());
        assert!(!HttpError::TooLarge("x".into()).is_retryable());
        assert!(
            HttpError::Refused("nope".into())
                .to_string()
                .contains("refused: nope")
        );
    }
}
