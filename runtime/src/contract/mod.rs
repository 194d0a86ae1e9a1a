//! The versioned boundary between plugins and the host.
//!
//! Each contract version the host accepts (`sluice:plugin@<version>`, WIT in
//! `wit/` and `wit/<version>/`) has one module here. Only those modules see
//! the bindings generated for their version: they turn the generated event,
//! verdict, log and publish types into the host's own types defined below,
//! and implement the version's imports by calling the host. The rest of the
//! host handles [`Event`], [`HandlerError`], [`Level`] and [`PublishError`],
//! and holds a compiled plugin as a [`Pre`] whatever its version, so a third
//! contract version is one more module plus one arm in the enums here.
//!
//! Compatibility rule: a published contract version never changes, and the
//! host keeps accepting every version it has shipped.

pub mod v0_1;
pub mod v0_2;

use wasmtime::component::{ComponentExportIndex, ComponentType, InstancePre, Linker, Lower};
use wasmtime::{AsContextMut, Result};

/// The contract versions this host accepts, newest first.
pub const CONTRACT_VERSIONS: &[&str] = &[v0_2::VERSION, v0_1::VERSION];

/// The export a sluice plugin must provide, for a contract version.
pub fn handler_export(version: &str) -> String {
    format!("sluice:plugin/handler@{version}")
}

// The event types below are lowered into a plugin as they are: they derive
// the canonical ABI of the contract's `types` records (every version so far
// has the same ones; the field names and order are checked against the
// plugin's `handle` when an instance is made), so an event is not copied into
// generated types first.

/// One NATS message header (a name may appear more than once).
#[derive(Debug, Clone, PartialEq, Eq, ComponentType, Lower)]
#[component(record)]
pub struct Header {
    /// Header name, as sent on the wire.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// Where and how the host received an event.
#[derive(Debug, Clone, PartialEq, Eq, Default, ComponentType, Lower)]
#[component(record)]
pub struct Delivery {
    /// JetStream stream; `None` for core NATS.
    pub stream: Option<String>,
    /// JetStream stream sequence; `None` for core NATS.
    pub sequence: Option<u64>,
    /// Publish time (JetStream) or receive time (core NATS), ms since the epoch.
    #[component(name = "published-at-ms")]
    pub published_at_ms: Option<u64>,
    /// The reply subject when the event was sent as a request.
    #[component(name = "reply-to")]
    pub reply_to: Option<String>,
}

/// One event as the host hands it to a plugin, whatever the contract version.
#[derive(Debug, Clone, PartialEq, Eq, ComponentType, Lower)]
#[component(record)]
pub struct Event {
    /// The concrete subject.
    pub subject: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// Headers in the order received.
    pub headers: Vec<Header>,
    /// The host's idempotency key of the event.
    #[component(name = "idempotency-key")]
    pub idempotency_key: String,
    /// Delivery attempt, from 1.
    pub attempt: u32,
    /// Delivery metadata.
    pub delivery: Delivery,
}

/// Why a handler did not succeed, as the plugin said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// Retry later, after the suggested delay if any.
    Retryable {
        /// The plugin's reason.
        message: String,
        /// Suggested delay in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// Never retry: dead-letter now.
    Permanent(String),
}

/// Severity of a plugin log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed diagnostics.
    Trace,
    /// Development diagnostics.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected, handled.
    Warn,
    /// A failure.
    Error,
}

impl Level {
    /// The level's name in logs (`info`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Why the host refused a publish; returned to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// Not in the plugin's grants, or reserved.
    NotGranted(String),
    /// Not a valid publish subject (or an invalid header).
    InvalidSubject(String),
    /// A per-event publish limit is reached.
    LimitExceeded(String),
}

impl PublishError {
    /// The explanation, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            PublishError::NotGranted(m)
            | PublishError::InvalidSubject(m)
            | PublishError::LimitExceeded(m) => m,
        }
    }
}

/// A stored state value and its revision (contract 0.2.0 `state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// The value.
    pub value: Vec<u8>,
    /// Its revision (0: written by this attempt, not committed yet).
    pub revision: u64,
}

/// Why a state call failed; returned to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// State is not granted to the plugin.
    NotGranted(String),
    /// The key is not valid.
    InvalidKey(String),
    /// A per-event write limit is reached.
    LimitExceeded(String),
    /// The store could not be reached.
    Unavailable(String),
}

/// The answer to a plugin's request (contract 0.2.0 `requester`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The answer's payload.
    pub payload: Vec<u8>,
    /// The answer's headers.
    pub headers: Vec<Header>,
}

/// Why a plugin's request got no answer; returned to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not in the request grants, or reserved.
    NotGranted(String),
    /// Not a valid subject.
    InvalidSubject(String),
    /// Nobody listens.
    NoResponders(String),
    /// No answer in time.
    TimedOut(String),
    /// The per-event request limit is reached.
    LimitExceeded(String),
    /// The connection failed.
    Unavailable(String),
}

/// A capability a component may import, as `sluice check` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    /// Structured logging (`sluice:plugin/logging`).
    Logging,
    /// Publishing through the outbox (`sluice:plugin/publisher`).
    Publish,
    /// Reading configuration and secrets (`sluice:plugin/config`, 0.2.0).
    Config,
    /// Key-value state (`sluice:plugin/state`, 0.2.0).
    State,
    /// Requests to other services (`sluice:plugin/requester`, 0.2.0).
    Request,
    /// Outbound HTTP (`wasi:http/outgoing-handler`, 0.2.0).
    Http,
}

impl Capability {
    /// The capability's short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Logging => "logging",
            Capability::Publish => "publish",
            Capability::Config => "config",
            Capability::State => "state",
            Capability::Request => "request",
            Capability::Http => "http",
        }
    }

    /// The capabilities among a component's imports (WASI imports are
    /// linked for every plugin but grant nothing, so they are not listed;
    /// `wasi:http/outgoing-handler` is, since it reaches out).
    pub fn of_imports<S: AsRef<str>>(imports: &[S]) -> Vec<Capability> {
        let mut caps: Vec<Capability> = imports
            .iter()
            .filter_map(|import| {
                let import = import.as_ref();
                if import.starts_with("wasi:http/outgoing-handler@") {
                    return Some(Capability::Http);
                }
                let name = import.strip_prefix("sluice:plugin/")?;
                match name.split('@').next()? {
                    "logging" => Some(Capability::Logging),
                    "publisher" => Some(Capability::Publish),
                    "config" => Some(Capability::Config),
                    "state" => Some(Capability::State),
                    "requester" => Some(Capability::Request),
                    _ => None,
                }
            })
            .collect();
        caps.sort();
        caps.dedup();
        caps
    }
}

/// What the host needs from a store's data to serve every contract version's
/// imports. [`crate::host::HostState`] implements it; the versions' modules
/// convert their generated types and call these.
pub trait PluginHost: wasmtime_wasi::WasiView + Send + 'static {
    /// Log one record.
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>);
    /// Queue one message in the outbox.
    fn publish(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), PublishError>;
    /// The plugin's configuration value or secret for `key`.
    fn config_get(&mut self, key: &str) -> Option<String>;
    /// The attempt's state transaction.
    fn state(&mut self) -> &mut crate::host::state::StateTxn;
    /// The attempt's requests.
    fn requests(&mut self) -> &mut crate::host::requester::RequestBudget;
}

/// A store's data as the generated import traits see it: the version
/// modules implement those traits for `Served<T>` (a blanket impl on `T`
/// would collide with the ones the bindings generate for `&mut T`).
pub struct Served<'a, T>(pub &'a mut T);

/// The [`HasData`](wasmtime::component::HasData) that hands the imports a [`Served`].
pub struct ServedBy<T>(std::marker::PhantomData<T>);

impl<T: 'static> wasmtime::component::HasData for ServedBy<T> {
    type Data<'a> = Served<'a, T>;
}

/// Add every contract version's imports to `linker` (WASI is added by the caller).
pub fn add_to_linker<T: PluginHost>(linker: &mut Linker<T>) -> Result<()> {
    v0_1::add_to_linker(linker)?;
    v0_2::add_to_linker(linker)
}

/// A pre-linked plugin of some contract version; instantiate once per event.
pub struct Pre<T: 'static> {
    version: Version,
    pre: InstancePre<T>,
    /// The plugin's `handle` export.
    handle: ComponentExportIndex,
}

/// The contract version a [`Pre`] was checked to implement.
#[derive(Clone, Copy)]
enum Version {
    V0_1,
    V0_2,
}

impl Version {
    fn name(self) -> &'static str {
        match self {
            Version::V0_1 => v0_1::VERSION,
            Version::V0_2 => v0_2::VERSION,
        }
    }
}

impl<T: Send + 'static> Pre<T> {
    /// Check that `pre` implements contract `version`'s world.
    pub fn new(version: &str, pre: InstancePre<T>) -> Result<Self> {
        let version = match version {
            v0_1::VERSION => v0_1::ConsumerPre::new(pre.clone()).map(|_| Version::V0_1)?,
            v0_2::VERSION => v0_2::ConsumerPre::new(pre.clone()).map(|_| Version::V0_2)?,
            other => {
                return Err(wasmtime::Error::msg(format!(
                    "contract version {other} is not accepted by this host (accepted: {})",
                    CONTRACT_VERSIONS.join(", ")
                )));
            }
        };
        // The world check above found both.
        let component = pre.component();
        let export = handler_export(version.name());
        let handle = component
            .get_export_index(None, &export)
            .and_then(|interface| component.get_export_index(Some(&interface), "handle"))
            .ok_or_else(|| {
                wasmtime::Error::msg(format!("the plugin exports no `{export}#handle`"))
            })?;
        Ok(Pre {
            version,
            pre,
            handle,
        })
    }

    /// The contract version.
    pub fn version(&self) -> &'static str {
        self.version.name()
    }

    /// A new instance in `store`.
    pub async fn instantiate_async(
        &self,
        mut store: impl AsContextMut<Data = T>,
    ) -> Result<Instance> {
        let instance = self.pre.instantiate_async(&mut store).await?;
        Ok(match self.version {
            Version::V0_1 => Instance::V0_1(v0_1::Handler::of(store, &instance, &self.handle)?),
            Version::V0_2 => Instance::V0_2(v0_2::Handler::of(store, &instance, &self.handle)?),
        })
    }
}

/// A live plugin instance of some contract version.
pub enum Instance {
    /// `sluice:plugin@0.1.0`.
    V0_1(v0_1::Handler),
    /// `sluice:plugin@0.2.0`.
    V0_2(v0_2::Handler),
}

impl Instance {
    /// Call the plugin's handler with `event`: `Err` is a trap, `Ok(Err)`
    /// the plugin's own verdict.
    pub async fn handle<T: Send + 'static>(
        &self,
        store: impl AsContextMut<Data = T>,
        event: &Event,
    ) -> Result<Result<(), HandlerError>> {
        match self {
            Instance::V0_1(handler) => handler.handle(store, event).await,
            Instance::V0_2(handler) => handler.handle(store, event).await,
        }
    }
}

/// The parts of a contract version that are the same as in 0.1.0: calling
/// `handle`, converting the event, verdict, log level and publish error, and
/// serving `types`, `logging` and `publisher`. Expanded inside a version's
/// module, where `types`, `logging` and `publisher` name its generated
/// interfaces; a version that changes any of these writes its own instead.
macro_rules! surface_of_0_1 {
    () => {
        /// The `handle` export of one instance, checked to take the
        /// host's [`Event`] as it is.
        pub struct Handler(wasmtime::component::Func);

        /// `handle`'s signature, with the host's event type.
        type HandleFunc<'a> =
            wasmtime::component::TypedFunc<(&'a Event,), (Result<(), types::HandlerError>,)>;

        impl Handler {
            /// Find `handle` (at `index`) in `instance` and check its type.
            pub fn of(
                mut store: impl AsContextMut,
                instance: &wasmtime::component::Instance,
                index: &wasmtime::component::ComponentExportIndex,
            ) -> wasmtime::Result<Handler> {
                let typed: HandleFunc<'_> = instance.get_typed_func(&mut store, index)?;
                Ok(Handler(*typed.func()))
            }

            /// Call `handle` with the host's `event`.
            // The one `unsafe` of the call path: rebuilding the typed
            // function `of` checked, as the generated bindings do.
            #[allow(unsafe_code)]
            pub async fn handle<T: Send + 'static>(
                &self,
                mut store: impl AsContextMut<Data = T>,
                event: &Event,
            ) -> wasmtime::Result<Result<(), HandlerError>> {
                // SAFETY: `of` made `self.0` from a `HandleFunc` that
                // wasmtime type-checked against the instance's `handle`; the
                // lifetime is the only difference, and lowering borrows
                // `event` for this call only.
                let callee: HandleFunc<'_> =
                    unsafe { wasmtime::component::TypedFunc::new_unchecked(self.0) };
                let (verdict,) = callee.call_async(store.as_context_mut(), (event,)).await?;
                Ok(verdict.map_err(|e| match e {
                    types::HandlerError::Retryable(e) => HandlerError::Retryable {
                        message: e.message,
                        retry_after_ms: e.retry_after_ms,
                    },
                    types::HandlerError::Permanent(message) => HandlerError::Permanent(message),
                }))
            }
        }

        fn level_of(level: types::Level) -> Level {
            match level {
                types::Level::Trace => Level::Trace,
                types::Level::Debug => Level::Debug,
                types::Level::Info => Level::Info,
                types::Level::Warn => Level::Warn,
                types::Level::Error => Level::Error,
            }
        }

        fn publish_error(e: PublishError) -> types::PublishError {
            match e {
                PublishError::NotGranted(m) => types::PublishError::NotGranted(m),
                PublishError::InvalidSubject(m) => types::PublishError::InvalidSubject(m),
                PublishError::LimitExceeded(m) => types::PublishError::LimitExceeded(m),
            }
        }

        impl<T: PluginHost> types::Host for super::Served<'_, T> {}

        impl<T: PluginHost> logging::Host for super::Served<'_, T> {
            fn log(&mut self, level: types::Level, message: String, fields: Vec<types::Field>) {
                let fields = fields.into_iter().map(|f| (f.key, f.value)).collect();
                PluginHost::log(self.0, level_of(level), message, fields);
            }
        }

        impl<T: PluginHost> publisher::Host for super::Served<'_, T> {
            fn publish(
                &mut self,
                subject: String,
                payload: Vec<u8>,
                headers: Vec<types::Header>,
            ) -> Result<(), types::PublishError> {
                let headers = headers.into_iter().map(|h| (h.name, h.value)).collect();
                PluginHost::publish(self.0, subject, payload, headers).map_err(publish_error)
            }
        }
    };
}
pub(crate) use surface_of_0_1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_from_imports_of_any_version() {
        let imports = [
            "wasi:cli/stdout@0.2.0",
            "sluice:plugin/logging@0.1.0",
            "sluice:plugin/config@0.2.0",
            "sluice:plugin/publisher@0.2.0",
            "sluice:plugin/types@0.2.0",
            "wasi:http/types@0.2.12",
            "wasi:http/outgoing-handler@0.2.12",
        ];
        assert_eq!(
            Capability::of_imports(&imports),
            vec![
                Capability::Logging,
                Capability::Publish,
                Capability::Config,
                Capability::Http
            ]
        );
        assert!(Capability::of_imports(&["wasi:io/streams@0.2.0"]).is_empty());
    }

    #[test]
    fn every_accepted_version_names_its_handler_export() {
        assert_eq!(CONTRACT_VERSIONS, &["0.2.0", "0.1.0"]);
        assert_eq!(handler_export("0.2.0"), "sluice:plugin/handler@0.2.0");
    }
}
