//! # sluice-sdk: write a sluice consumer plugin as one function
//!
//! A sluice plugin is a WebAssembly component that exports the
//! `sluice:plugin/handler@0.2.0` interface (contract 0.2.0, WIT in
//! `wit/0.2.0/`). This crate hides the generated bindings: you write one
//! function from [`Event`] to [`HandlerResult`] and export it with
//! [`export_handler!`]. Logging ([`log`], [`info!`] and friends), publishing
//! ([`publish`], [`reply`]), requests ([`request`]), configuration
//! ([`config::get`]), state ([`state::get`], [`state::cas`], ...) and
//! outbound HTTP ([`http::get`], [`http::post_json`], [`http::Request`]) call
//! into the host. A component imports only what it calls, so a plugin that never
//! reads its configuration does not ask for it.
//!
//! ```ignore
//! // Cargo.toml: [lib] crate-type = ["cdylib"], dependency sluice-sdk
//! use sluice_sdk::{Event, HandlerError, HandlerResult};
//!
//! fn handle(event: Event) -> HandlerResult {
//!     let order: serde_json::Value = event.json()?;           // bad JSON -> permanent error
//!     let Some(id) = order.get("id") else {
//!         return Err(HandlerError::permanent("order has no id"));
//!     };
//!     sluice_sdk::info!("order {id} received on {}", event.subject);
//!     sluice_sdk::publish("orders.accepted", id.to_string())?; // sent only if we return Ok
//!     Ok(())
//! }
//!
//! sluice_sdk::export_handler!(handle);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to copy into the host's
//! plugin folder next to a `<name>.toml` manifest.
//!
//! ## Delivery in one paragraph
//! The host owns delivery. Return `Ok(())` and the event is done: your
//! publishes are sent and the event is acknowledged. Return
//! [`HandlerError::retryable`] (or panic, or run past the time limit) and the
//! host retries it later with `attempt` incremented. Return
//! [`HandlerError::permanent`] and the event is dead-lettered without retry.
//! Publishes of a failed attempt are discarded, so a handler can publish
//! freely and still fail.

use std::cell::RefCell;
use std::time::Duration;

pub mod http;

#[doc(hidden)]
pub mod __private {
    //! Generated bindings; not part of the public API.
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        path: "../wit/0.2.0",
        world: "consumer",
        pub_export_macro: true,
        export_macro_name: "__sluice_export_world",
        default_bindings_module: "sluice_sdk::__private",
        generate_all,
    });
    pub use self::exports::sluice::plugin::handler::Guest;
}

use __private::sluice::plugin::types;

/// One event routed to the plugin: subject, payload, headers, the host's
/// idempotency key, the attempt number and delivery metadata.
pub type Event = types::Event;
/// One NATS header (name, value). Names may repeat.
pub type Header = types::Header;
/// Where the event came from: JetStream stream and sequence, publish time, reply subject.
pub type Delivery = types::Delivery;
/// The error a handler returns: retryable (with an optional delay hint) or permanent.
pub type HandlerError = types::HandlerError;
/// Why the host refused a publish.
pub type PublishError = types::PublishError;
/// Log severity.
pub type Level = types::Level;
/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

impl Event {
    /// The first value of header `name` (case-sensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    }

    /// The payload as UTF-8 text, or a permanent error naming the problem.
    pub fn text(&self) -> Result<&str, HandlerError> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| HandlerError::permanent(format!("payload is not UTF-8: {e}")))
    }

    /// The payload parsed as JSON, or a permanent error naming the problem.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| HandlerError::permanent(format!("payload is not valid JSON: {e}")))
    }
}

impl HandlerError {
    /// A transient failure: the host retries the event per its retry policy.
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError::Retryable(types::RetryableError {
            message: message.into(),
            retry_after_ms: None,
        })
    }

    /// A transient failure with a suggested delay before the next attempt
    /// (honoured within the retry policy's bounds).
    pub fn retry_after(message: impl Into<String>, delay: Duration) -> Self {
        HandlerError::Retryable(types::RetryableError {
            message: message.into(),
            retry_after_ms: Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
        })
    }

    /// The event can never succeed: dead-letter it without retrying.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::Permanent(message.into())
    }
}

/// A refused publish fails the event as retryable, so `?` works in handlers.
/// Map it yourself when another outcome fits better.
impl From<PublishError> for HandlerError {
    fn from(e: PublishError) -> Self {
        HandlerError::retryable(describe_publish_error(&e))
    }
}

/// A readable sentence for a refused publish.
pub fn describe_publish_error(e: &PublishError) -> String {
    match e {
        PublishError::NotGranted(m) => format!("publish not granted: {m}"),
        PublishError::InvalidSubject(m) => format!("invalid publish: {m}"),
        PublishError::LimitExceeded(m) => format!("publish limit exceeded: {m}"),
    }
}

/// Queue a message for `subject`; it is sent only if the handler returns `Ok`.
pub fn publish(subject: &str, payload: impl AsRef<[u8]>) -> Result<(), PublishError> {
    __private::sluice::plugin::publisher::publish(subject, payload.as_ref(), &[])
}

/// Like [`publish`], with headers given as `(name, value)` pairs.
pub fn publish_with_headers(
    subject: &str,
    payload: impl AsRef<[u8]>,
    headers: &[(&str, &str)],
) -> Result<(), PublishError> {
    let headers = to_headers(headers);
    __private::sluice::plugin::publisher::publish(subject, payload.as_ref(), &headers)
}

/// `(name, value)` pairs as contract headers.
fn to_headers(pairs: &[(&str, &str)]) -> Vec<Header> {
    pairs
        .iter()
        .map(|(name, value)| Header {
            name: name.to_string(),
            value: value.to_string(),
        })
        .collect()
}

/// Answer the request `event` carries: queue `payload` for its reply
/// subject, sent (like every publish) only if the handler returns `Ok`. No
/// grant is needed, and no other inbox can be reached. A permanent error if
/// the event is not a request (it has no reply subject).
///
/// ```ignore
/// fn handle(event: Event) -> HandlerResult {
///     sluice_sdk::reply(&event, format!("re: {}", event.text()?))
/// }
/// ```
pub fn reply(event: &Event, payload: impl AsRef<[u8]>) -> Result<(), HandlerError> {
    let Some(to) = event.delivery.reply_to.as_deref().filter(|r| !r.is_empty()) else {
        return Err(HandlerError::permanent(
            "cannot reply: the event is not a request (it has no reply subject)",
        ));
    };
    publish(to, payload)?;
    Ok(())
}

/// The plugin's configuration and secrets.
pub mod config {
    /// The value of `key`: an operator secret (`plugin_secrets`), else the
    /// operator's value (`plugin_config`), else the manifest's `[config]`;
    /// `None` when none sets it. The host never logs what is read here; a
    /// plugin should not log a secret either.
    ///
    /// ```ignore
    /// let url = sluice_sdk::config::get("api_url").unwrap_or_else(|| "http://localhost".into());
    /// let token = sluice_sdk::config::require("api_token")?; // permanent error if unset
    /// ```
    pub fn get(key: &str) -> Option<String> {
        crate::__private::sluice::plugin::config::get(key)
    }

    /// Like [`get`], but a missing key is a permanent error naming it (the
    /// event cannot succeed until the operator sets it).
    pub fn require(key: &str) -> Result<String, crate::HandlerError> {
        get(key).ok_or_else(|| {
            crate::HandlerError::permanent(format!(
                "configuration key `{key}` is not set: add it to the manifest's [config] or the operator's plugin_config / plugin_secrets"
            ))
        })
    }
}

/// The plugin's key-value state (needs `state = true` in the manifest).
///
/// Writes are buffered and committed only if the handler returns `Ok`
/// (before its publishes); this attempt's reads see them. A
/// compare-and-swap that finds the key changed at commit fails the attempt
/// as retryable, and the retry reads the new value, so a read-modify-write
/// with [`cas`] is exact even with many hosts:
///
/// ```ignore
/// let (total, revision) = match sluice_sdk::state::get("total")? {
///     Some(e) => (String::from_utf8_lossy(&e.value).parse::<i64>().unwrap_or(0), e.revision),
///     None => (0, 0), // revision 0: the key must still not exist at commit
/// };
/// sluice_sdk::state::cas("total", revision, (total + 1).to_string())?;
/// ```
pub mod state {
    use std::time::Duration;

    use crate::__private::sluice::plugin::state as wit;
    pub use wit::{Entry, StateError};

    /// The value of `key` and its revision, as this attempt's writes left it.
    pub fn get(key: &str) -> Result<Option<Entry>, StateError> {
        wit::get(key)
    }

    /// Set `key` to `value` when the attempt commits.
    pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<(), StateError> {
        wit::set(key, value.as_ref(), None)
    }

    /// Like [`set`], the value expiring after `ttl` (whole seconds, at least one).
    pub fn set_with_ttl(
        key: &str,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        wit::set(key, value.as_ref(), Some(ttl_ms))
    }

    /// Set `key` to `value` at commit only if its revision is still
    /// `revision` then (0: only if it does not exist); otherwise the attempt
    /// fails as retryable.
    pub fn cas(key: &str, revision: u64, value: impl AsRef<[u8]>) -> Result<(), StateError> {
        wit::compare_and_swap(key, revision, value.as_ref(), None)
    }

    /// Delete `key` when the attempt commits.
    pub fn delete(key: &str) -> Result<(), StateError> {
        wit::delete(key)
    }

    /// The keys starting with `prefix`, sorted.
    pub fn list_keys(prefix: &str) -> Result<Vec<String>, StateError> {
        wit::list_keys(prefix)
    }
}

/// A failed state call fails the event, so `?` works in handlers: retryable
/// when the store was unreachable, permanent otherwise (not granted, bad key,
/// over a limit: a retry cannot help).
impl From<state::StateError> for HandlerError {
    fn from(e: state::StateError) -> Self {
        match e {
            state::StateError::Unavailable(m) => {
                HandlerError::retryable(format!("state unavailable: {m}"))
            }
            state::StateError::NotGranted(m) => {
                HandlerError::permanent(format!("state not granted: {m}"))
            }
            state::StateError::InvalidKey(m) => {
                HandlerError::permanent(format!("invalid state key: {m}"))
            }
            state::StateError::LimitExceeded(m) => {
                HandlerError::permanent(format!("state limit exceeded: {m}"))
            }
        }
    }
}

/// The answer to a [`request`].
pub type Response = __private::sluice::plugin::requester::Response;
/// Why a [`request`] got no answer.
pub type RequestError = __private::sluice::plugin::requester::RequestError;

/// Ask another service: send `payload` to `subject` (granted by the
/// manifest's `request` list) and wait for the first answer, at most until
/// the attempt's time limit. Sent at once, not at commit, so a retried event
/// asks again.
///
/// ```ignore
/// let answer = sluice_sdk::request("prices.quote", br#"{"sku":"A-1"}"#)?;
/// let price: Price = serde_json::from_slice(&answer.payload)?;
/// ```
pub fn request(subject: &str, payload: impl AsRef<[u8]>) -> Result<Response, RequestError> {
    request_with(subject, payload, &[], None)
}

/// Like [`request`], with headers and a timeout shorter than the attempt's
/// time limit.
pub fn request_with(
    subject: &str,
    payload: impl AsRef<[u8]>,
    headers: &[(&str, &str)],
    timeout: Option<Duration>,
) -> Result<Response, RequestError> {
    let headers = to_headers(headers);
    let timeout_ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    __private::sluice::plugin::requester::request(subject, payload.as_ref(), &headers, timeout_ms)
}

/// A failed request fails the event, so `?` works: retryable when nobody
/// answered (in time) or the connection failed, permanent when the request
/// is not allowed.
impl From<RequestError> for HandlerError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::NoResponders(m)
            | RequestError::TimedOut(m)
            | RequestError::Unavailable(m) => {
                HandlerError::retryable(format!("request failed: {m}"))
            }
            RequestError::NotGranted(m)
            | RequestError::InvalidSubject(m)
            | RequestError::LimitExceeded(m) => {
                HandlerError::permanent(format!("request refused: {m}"))
            }
        }
    }
}

/// Serialize `value` as JSON and queue it for `subject` (see [`publish`]).
#[cfg(feature = "json")]
pub fn publish_json<T: serde::Serialize + ?Sized>(
    subject: &str,
    value: &T,
) -> Result<(), HandlerError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| HandlerError::permanent(format!("cannot encode JSON: {e}")))?;
    publish_with_headers(subject, bytes, &[("Content-Type", "application/json")])?;
    Ok(())
}

/// Emit a log record with structured `(key, value)` fields into the host log.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<types::Field> = fields
        .iter()
        .map(|(key, value)| types::Field {
            key: key.to_string(),
            value: value.to_string(),
        })
        .collect();
    __private::sluice::plugin::logging::log(level, message, &fields);
}

/// Log at info level with `format!` syntax.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &::std::format!($($arg)*), &[]) };
}
/// Log at debug level with `format!` syntax.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)*), &[]) };
}
/// Log at warn level with `format!` syntax.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)*), &[]) };
}
/// Log at error level with `format!` syntax.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::Level::Error, &::std::format!($($arg)*), &[]) };
}

thread_local! {
    /// The idempotency key of the event being handled (set by [`export_handler!`]).
    static CURRENT_KEY: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The idempotency key of the event being handled, `None` outside a
/// handler. [`http`] requests send it as `Idempotency-Key`.
pub fn idempotency_key() -> Option<String> {
    CURRENT_KEY.with(|k| k.borrow().clone())
}

/// Marks the event being handled until dropped (used by [`export_handler!`]).
#[doc(hidden)]
pub struct __CurrentEvent(());

impl __CurrentEvent {
    #[doc(hidden)]
    pub fn enter(event: &Event) -> __CurrentEvent {
        CURRENT_KEY.with(|k| *k.borrow_mut() = Some(event.idempotency_key.clone()));
        __CurrentEvent(())
    }
}

impl Drop for __CurrentEvent {
    fn drop(&mut self) {
        CURRENT_KEY.with(|k| *k.borrow_mut() = None);
    }
}

/// Export `handler` (a `fn(Event) -> HandlerResult`) as the plugin's entry point.
///
/// Use it once per plugin crate, at the top level. While the handler runs,
/// [`idempotency_key`] returns the event's key (the [`http`] helpers send it).
#[macro_export]
macro_rules! export_handler {
    ($handler:path) => {
        #[doc(hidden)]
        struct __SluiceHandler;

        impl $crate::__private::Guest for __SluiceHandler {
            fn handle(event: $crate::Event) -> $crate::HandlerResult {
                let _current = $crate::__CurrentEvent::enter(&event);
                $handler(event)
            }
        }

        $crate::__private::__sluice_export_world!(__SluiceHandler with_types_in $crate::__private);
    };
}
