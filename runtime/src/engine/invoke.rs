//! Running one event through one plugin version: a fresh store and instance,
//! a wall-clock deadline, memory/table/instance limits, and a classified
//! outcome.
//!
//! A fresh instance per event means no state leaks between events and a trap
//! can never poison the next event. The pooling allocator and `InstancePre`
//! keep that cheap. Whatever the plugin does (trap, panic, overflow its
//! stack, run out of memory or time, return a malformed value) ends only this
//! invocation: it becomes a [`Failure`] with a [`FailureClass`] that drives
//! the retry policy, and a message bounded to [`MAX_FAILURE_MESSAGE`] bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use crate::contract::{self, HandlerError};
use crate::engine::WasmEngine;
use crate::engine::component::CompiledPlugin;
use crate::engine::governor::{CpuProfile, CpuTicket};
use crate::host::http::{HttpBudget, HttpLimits, HttpPolicy};
use crate::host::requester::{RequestBudget, Requester};
use crate::host::state::{StateSpace, StateWrite};
use crate::host::{
    HostState, LogBudget, LogGate, LogRecord, MemoryLimiter, OutboundMessage, PluginConfig,
    PluginTag, PublishLimits, truncated,
};
use crate::subject::PublishGrants;

/// Longest failure message kept (logged, counted, dead-lettered), in bytes.
pub const MAX_FAILURE_MESSAGE: usize = 4096;

/// Most of the attempt's time kept back from a request for the plugin to
/// handle its answer (or its absence); a tenth of the time limit below that.
pub const REQUEST_RESERVE: Duration = Duration::from_millis(100);

/// Memory growth within one invocation past which it counts as heavy for
/// the CPU governor (see [`CpuTicket::mark_heavy`]).
pub const HEAVY_GROWTH: usize = 16 << 20;

/// Per-invocation limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvokeLimits {
    /// Wall-clock time limit for instantiate + handle.
    pub timeout: Duration,
    /// Linear memory cap in bytes.
    pub max_memory_bytes: usize,
    /// Table size cap in elements.
    pub max_table_elements: usize,
    /// Core instances the component may create.
    pub max_core_instances: usize,
    /// Largest payload accepted; larger events fail without instantiating.
    pub max_payload_bytes: usize,
    /// Publish caps.
    pub publish: PublishLimits,
    /// Log records plus output lines kept per event; the rest are dropped and counted.
    pub max_log_lines: u32,
    /// HTTP request count and response size caps.
    pub http: HttpLimits,
}

impl Default for InvokeLimits {
    fn default() -> Self {
        crate::limits::Limits::default().invoke_limits()
    }
}

/// What the host should make of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// The handler returned a retryable error.
    Retryable,
    /// The handler returned a permanent error: dead-letter without retry.
    Permanent,
    /// The time limit was reached.
    DeadlineExceeded,
    /// The plugin hit its memory limit (and then trapped).
    OutOfMemory,
    /// The plugin overflowed its stack.
    StackOverflow,
    /// Any other trap (a Rust panic is an `unreachable` trap), or a value the
    /// plugin returned that breaks the component ABI (e.g. a non-UTF-8 string).
    Trap,
    /// The instance could not be created.
    Instantiate,
    /// Not run: the plugin's circuit breaker is open (core NATS events).
    CircuitOpen,
    /// A table or instance-count limit was reached.
    ResourceLimit,
    /// The event's payload is larger than the plugin accepts; not retried.
    PayloadTooLarge,
    /// The plugin reached a per-event publish limit; not retried.
    PublishLimit,
    /// Not finished when the host stopped (core NATS events, which nothing
    /// else can hold, are dead-lettered with this class).
    Shutdown,
    /// A state compare-and-swap found its key changed at commit: retried
    /// (the retry reads anew), and not held against the circuit breaker,
    /// since contention is no sign of a failing dependency.
    StateConflict,
}

impl FailureClass {
    /// Every class, in a fixed order (for per-class counters).
    pub const ALL: [FailureClass; 13] = [
        FailureClass::Retryable,
        FailureClass::Permanent,
        FailureClass::DeadlineExceeded,
        FailureClass::OutOfMemory,
        FailureClass::StackOverflow,
        FailureClass::Trap,
        FailureClass::Instantiate,
        FailureClass::CircuitOpen,
        FailureClass::ResourceLimit,
        FailureClass::PayloadTooLarge,
        FailureClass::PublishLimit,
        FailureClass::Shutdown,
        FailureClass::StateConflict,
    ];

    /// Stable name used in logs, metrics and dead-letter records.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Retryable => "retryable",
            FailureClass::Permanent => "permanent",
            FailureClass::DeadlineExceeded => "deadline-exceeded",
            FailureClass::OutOfMemory => "out-of-memory",
            FailureClass::StackOverflow => "stack-overflow",
            FailureClass::Trap => "trap",
            FailureClass::Instantiate => "instantiate",
            FailureClass::CircuitOpen => "circuit-open",
            FailureClass::ResourceLimit => "resource-limit",
            FailureClass::PayloadTooLarge => "payload-too-large",
            FailureClass::PublishLimit => "publish-limit",
            FailureClass::Shutdown => "shutdown",
            FailureClass::StateConflict => "state-conflict",
        }
    }

    /// The class named `name` (the inverse of [`as_str`](Self::as_str)).
    pub fn parse(name: &str) -> Option<FailureClass> {
        FailureClass::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Whether a retry could succeed. Traps, deadlines and resource
    /// exhaustion are retried (the contract says so: they may be transient);
    /// a permanent error, an oversized payload or a publish limit are not.
    pub fn is_retryable(self) -> bool {
        !matches!(
            self,
            FailureClass::Permanent
                | FailureClass::CircuitOpen
                | FailureClass::PayloadTooLarge
                | FailureClass::PublishLimit
                | FailureClass::Shutdown
        )
    }

    fn index(self) -> usize {
        FailureClass::ALL
            .iter()
            .position(|c| *c == self)
            .expect("every class is in ALL")
    }
}

/// A counter per [`FailureClass`], updated concurrently.
#[derive(Debug, Default)]
pub struct ClassCounters([AtomicU64; FailureClass::ALL.len()]);

/// A point-in-time copy of [`ClassCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassCounts([u64; FailureClass::ALL.len()]);

impl ClassCounters {
    /// Count one more of `class`.
    pub fn bump(&self, class: FailureClass) {
        self.0[class.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Copy the counters.
    pub fn snapshot(&self) -> ClassCounts {
        ClassCounts(std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)))
    }
}

/// Serialised as `{"<class>": count}` for the classes seen at least once.
impl serde::Serialize for ClassCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let seen = self.nonzero();
        let mut map = serializer.serialize_map(Some(seen.len()))?;
        for (class, n) in seen {
            map.serialize_entry(class.as_str(), &n)?;
        }
        map.end()
    }
}

impl ClassCounts {
    /// How many of `class`.
    pub fn get(&self, class: FailureClass) -> u64 {
        self.0[class.index()]
    }

    /// The classes counted at least once, with their counts.
    pub fn nonzero(&self) -> Vec<(FailureClass, u64)> {
        FailureClass::ALL
            .iter()
            .map(|c| (*c, self.get(*c)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// A failed invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Classification.
    pub class: FailureClass,
    /// Human-readable reason, at most [`MAX_FAILURE_MESSAGE`] bytes.
    pub message: String,
    /// Delay suggested by the plugin.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure of `class`, its message cut to [`MAX_FAILURE_MESSAGE`].
    pub fn new(class: FailureClass, message: &str) -> Failure {
        Failure {
            class,
            message: truncated(message, MAX_FAILURE_MESSAGE).into_owned(),
            retry_after: None,
        }
    }
}

/// Result of one invocation.
#[derive(Debug)]
pub struct InvocationReport {
    /// `Ok` when the handler succeeded.
    pub outcome: Result<(), Failure>,
    /// Buffered publishes; empty unless the handler succeeded.
    pub published: Vec<OutboundMessage>,
    /// Log records (only when requested).
    pub logs: Vec<LogRecord>,
    /// stdout/stderr lines (only when requested).
    pub output: Vec<String>,
    /// Publishes the host refused during the call.
    pub refused_publishes: u32,
    /// Buffered state writes and their key space; `None` unless the handler
    /// succeeded and wrote something.
    pub state_writes: Option<(StateSpace, Vec<StateWrite>)>,
    /// State calls the host refused during the call.
    pub refused_state: u32,
    /// Requests the host refused during the call.
    pub refused_requests: u32,
    /// HTTP requests the host refused during the call.
    pub refused_http: u32,
    /// Log records and output lines dropped (per-event cap or rate limit).
    pub log_dropped: u32,
    /// Time spent instantiating (zero when the plugin was never instantiated).
    pub instantiate_time: Duration,
    /// Total time.
    pub elapsed: Duration,
    /// Time the CPU governor held this attempt back (waiting for a
    /// background lane, idling after one): the host's contention, not the
    /// plugin's.
    pub throttled: Duration,
}

impl InvocationReport {
    /// Whether the attempt missed its deadline mostly because the CPU
    /// governor held it back (throttled for at least a quarter of its time).
    /// Such a failure says the host was busy, not that the plugin's
    /// dependency is failing: it is still retried like any deadline, but
    /// should not count as a circuit-breaker failure.
    pub fn cpu_starved(&self) -> bool {
        matches!(&self.outcome, Err(f) if f.class == FailureClass::DeadlineExceeded)
            && self.throttled * 4 >= self.elapsed
            && !self.throttled.is_zero()
    }
}

/// One event to run.
pub struct InvocationRequest<'a> {
    /// The event as the plugin will see it.
    pub event: &'a contract::Event,
    /// Plugin name and version, for tagging.
    pub tag: &'a PluginTag,
    /// The plugin's CPU profile, if the caller keeps it (else looked up by
    /// name).
    pub cpu: Option<&'a CpuProfile>,
    /// When the attempt began, if the caller read the clock already (else
    /// read here): the time limit counts from it.
    pub started: Option<Instant>,
    /// Publish grants.
    pub grants: &'a Arc<PublishGrants>,
    /// Configuration and secrets the plugin reads (`config.get`).
    pub config: &'a Arc<PluginConfig>,
    /// The plugin's state key space; `None`: state not granted.
    pub state: Option<&'a StateSpace>,
    /// What the plugin may ask (`requester`); `None`: nothing granted.
    pub requester: Option<Requester>,
    /// What the plugin may reach over HTTP; `None`: nothing granted.
    pub http: Option<&'a Arc<HttpPolicy>>,
    /// Limits.
    pub limits: InvokeLimits,
    /// The plugin's log rate limit, shared by all its invocations.
    pub log_budget: &'a Arc<LogBudget>,
    /// Keep log records and output lines in the report (for `sluice invoke`).
    pub keep_logs: bool,
}

/// A live instance of one plugin version kept for its next event
/// (`isolation = "reuse"`). It is only ever handed back after a call that
/// returned normally, so a trap, a deadline or a resource failure never
/// carries over; its linear memory (the plugin's own state) does.
pub struct WarmInstance {
    store: Store<HostState>,
    consumer: contract::Instance,
    /// Events this instance has handled.
    pub uses: u32,
}

impl std::fmt::Debug for WarmInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmInstance")
            .field("uses", &self.uses)
            .finish_non_exhaustive()
    }
}

/// Run `request` on a fresh instance of `plugin`.
pub async fn invoke(
    engine: &WasmEngine,
    plugin: &CompiledPlugin,
    request: InvocationRequest<'_>,
) -> InvocationReport {
    invoke_reusing(engine, plugin, request, None, false).await.0
}

/// Run `request` on `warm` if given (it must be an instance of `plugin`),
/// else on a fresh instance. With `keep_warm`, the instance is handed back
/// when the call returned normally (whatever the handler's verdict), for the
/// caller to reuse; after a trap, a deadline or a refused start it is dropped.
///
/// An `async move` block rather than an `async fn`: an `async fn` copies its
/// arguments into locals and keeps both in its future, and the request
/// twice made the future 1,320 bytes, past the 1 KiB up to which glibc
/// serves an allocation from its per-thread cache (every event boxes this
/// future; docs/benchmarks.md, ninth round).
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn invoke_reusing<'a>(
    engine: &'a WasmEngine,
    plugin: &'a CompiledPlugin,
    request: InvocationRequest<'a>,
    warm: Option<WarmInstance>,
    keep_warm: bool,
) -> impl Future<Output = (InvocationReport, Option<WarmInstance>)> + Send + 'a {
    async move {
        let started = request.started.unwrap_or_else(Instant::now);
        let limits = request.limits;
        if request.event.payload.len() > limits.max_payload_bytes {
            let failure = Failure::new(
                FailureClass::PayloadTooLarge,
                &format!(
                    "payload of {} bytes is larger than the plugin's limit of {} bytes (max_payload); not retried",
                    request.event.payload.len(),
                    limits.max_payload_bytes
                ),
            );
            return (refused_before_start(started, failure), warm);
        }
        let deadline = started + limits.timeout;
        // A request is cut a little before the deadline, so the plugin has time
        // to handle a missing answer (fail as retryable, fall back) instead of
        // being interrupted.
        let request_deadline = deadline - (limits.timeout / 10).min(REQUEST_RESERVE);
        let governor = engine.governor();
        let ticket = match request.cpu {
            Some(profile) => governor.enter_with(profile, started, deadline),
            None => governor.enter_at(&request.tag.name, started, deadline),
        };
        if !ticket.admitted_at_once() && !Box::pin(ticket.admit()).await {
            let failure = Failure::new(
                FailureClass::DeadlineExceeded,
                &format!(
                    "time limit of {:?} exceeded waiting for CPU: this plugin's attempts usually run long, and they run only in the background share while other plugins are busy",
                    limits.timeout
                ),
            );
            let throttled = ticket.throttled();
            return (
                InvocationReport {
                    throttled,
                    ..refused_before_start(started, failure)
                },
                warm,
            );
        }
        let lane = ticket.lane_handle();
        let mut ticket = Some(ticket);
        // HTTP requests (the budgets below) share the request deadline, for the
        // same reason.
        let (mut store, consumer) = match warm {
            Some(WarmInstance {
                mut store,
                consumer,
                uses,
            }) => {
                // A warm instance belongs to this route: what it already holds
                // is kept, not cloned again (each clone and drop of a shared
                // `Arc` is an atomic write the other workers' events also make).
                let data = store.data_mut();
                data.begin_event();
                if !Arc::ptr_eq(&data.config, request.config) {
                    data.config = request.config.clone();
                }
                data.state.reset(request.state);
                data.requests = RequestBudget::new(request.requester, request_deadline);
                data.http.renew(request.http, limits.http, request_deadline);
                arm(&mut store, ticket.take());
                (store, Some((consumer, uses)))
            }
            None => {
                let gate = Arc::new(LogGate::new(
                    request.tag.clone(),
                    request.log_budget.clone(),
                    limits.max_log_lines,
                ));
                let state = HostState::new(
                    request.tag.clone(),
                    request.grants.clone(),
                    limits.publish,
                    MemoryLimiter::new(
                        limits.max_memory_bytes,
                        limits.max_table_elements,
                        limits.max_core_instances,
                    ),
                    gate,
                    request.keep_logs,
                );
                let mut store = Store::new(engine.engine(), state);
                store.data_mut().config = request.config.clone();
                store.data_mut().state.reset(request.state);
                store.data_mut().requests = RequestBudget::new(request.requester, request_deadline);
                store.data_mut().http = HttpBudget::new(
                    request.tag.name.clone(),
                    request.http.cloned(),
                    limits.http,
                    request_deadline,
                );
                store.limiter(|s| &mut s.limiter);
                store.epoch_deadline_callback(on_epoch);
                arm(&mut store, ticket.take());
                (store, None)
            }
        };

        // The event's own reply subject is the one `_INBOX.` subject the plugin
        // may publish to (its answer, sent with the outbox on success).
        store
            .data_mut()
            .outbox
            .answer_to(request.event.delivery.reply_to.clone());
        let mut instantiate_time = Duration::ZERO;
        let uses = consumer.as_ref().map_or(0, |(_, uses)| *uses);
        // Boxed: the call's future (instantiation, the wasm call on its fiber)
        // is most of this one's size; wrapped below by pointer, not by copy.
        let mut call = Box::pin(async {
            let consumer = match consumer {
                Some((consumer, _)) => consumer,
                None => {
                    // Boxed: instantiation's future is large, and a reused
                    // instance's call would otherwise carry (and copy) it too.
                    let consumer = Box::pin(plugin.pre.instantiate_async(&mut store))
                        .await
                        .map_err(|e| (FailureClass::Instantiate, e))?;
                    instantiate_time = started.elapsed();
                    consumer
                }
            };
            let verdict = consumer
                .handle(&mut store, request.event)
                .await
                .map_err(|e| (FailureClass::Trap, e))?;
            Ok((verdict, consumer))
        });
        // While the call is suspended outside the governor (the plugin waits in
        // a host call), it gives its CPU lane back.
        let result = {
            let call = std::future::poll_fn(|cx| {
                let poll = call.as_mut().poll(cx);
                if poll.is_pending() {
                    lane.suspended();
                }
                poll
            });
            // Epoch interruption stops wasm code; this backstop also stops a
            // plugin that waits in a host call (for example a long WASI sleep).
            let backstop = limits.timeout + Duration::from_millis(200);
            match tokio::time::timeout(backstop, call).await {
                Ok(result) => result,
                Err(_) => Err((
                    FailureClass::DeadlineExceeded,
                    wasmtime::Error::msg(
                        "the handler did not return in time (waiting in a host call)",
                    ),
                )),
            }
        };
        drop(call);
        // The invocation's CPU ticket lives in the store: end it now, whether or
        // not the store lives on.
        let mut ticket = disarm(&mut store);
        if let Some(ticket) = ticket.as_mut()
            && store.data().limiter.grown() >= HEAVY_GROWTH
        {
            ticket.mark_heavy();
        }
        // One clock read ends both the ticket and the report's elapsed time.
        let ended = Instant::now();
        let throttled = ticket.as_mut().map_or(Duration::ZERO, |ticket| {
            ticket.end_at(ended);
            ticket.throttled()
        });
        drop(ticket);

        let (result, consumer) = match result {
            Ok((verdict, consumer)) => (Ok(verdict), Some(consumer)),
            Err(e) => (Err(e), None),
        };
        let state = store.data_mut();
        let output = state.output.finish();
        let logs = state.logs.take_records();
        let refused_publishes = state.outbox.refused();
        let outcome = match (result, state.outbox.limit_reached()) {
            // The handler returned, but its outbox is incomplete.
            (Ok(_), Some(limit)) => Err(Failure::new(
                FailureClass::PublishLimit,
                &format!("the plugin exceeded its publish limit: {limit}; nothing was published"),
            )),
            (Ok(Ok(())), None) => Ok(()),
            (
                Ok(Err(HandlerError::Retryable {
                    message,
                    retry_after_ms,
                })),
                None,
            ) => Err(Failure {
                retry_after: retry_after_ms.map(Duration::from_millis),
                ..Failure::new(FailureClass::Retryable, &message)
            }),
            (Ok(Err(HandlerError::Permanent(message))), None) => {
                Err(Failure::new(FailureClass::Permanent, &message))
            }
            (Err((class, error)), _) => Err(classify(class, &error, state, limits.timeout)),
        };
        let (published, state_writes) = if outcome.is_ok() {
            (state.outbox.take(), state.state.take())
        } else {
            (Vec::new(), None)
        };
        let refused_state = state.state.refused();
        let refused_requests = state.requests.refused();
        let refused_http = state.http.refused();
        let report = InvocationReport {
            outcome,
            published,
            logs,
            output,
            refused_publishes,
            state_writes,
            refused_state,
            refused_requests,
            refused_http,
            log_dropped: state.log_gate.dropped(),
            instantiate_time,
            elapsed: ended.saturating_duration_since(started),
            throttled,
        };
        let warm = match consumer {
            Some(consumer) if keep_warm => Some(WarmInstance {
                store,
                consumer,
                uses: uses + 1,
            }),
            _ => None,
        };
        (report, warm)
    }
}

fn refused_before_start(started: Instant, failure: Failure) -> InvocationReport {
    InvocationReport {
        outcome: Err(failure),
        published: Vec::new(),
        logs: Vec::new(),
        output: Vec::new(),
        refused_publishes: 0,
        state_writes: None,
        refused_state: 0,
        refused_requests: 0,
        refused_http: 0,
        log_dropped: 0,
        instantiate_time: Duration::ZERO,
        elapsed: started.elapsed(),
        throttled: Duration::ZERO,
    }
}

/// Every store's epoch callback (set once, when the store is made): the
/// invocation's ticket decides (interrupt at the deadline, else the CPU
/// governor); a store entered with no invocation armed is interrupted.
fn on_epoch(
    mut store: wasmtime::StoreContextMut<'_, HostState>,
) -> wasmtime::Result<UpdateDeadline> {
    Ok(match store.data_mut().cpu.as_mut() {
        Some(ticket) => ticket.on_tick(),
        None => UpdateDeadline::Interrupt,
    })
}

/// Give `store`'s epoch callback the invocation's `ticket`.
fn arm(store: &mut Store<HostState>, ticket: Option<CpuTicket>) {
    // A background invocation (admitted with a fresh lane) checks in at the
    // first epoch check; a foreground one at the end of its first tick.
    let foreground = ticket.as_ref().is_some_and(CpuTicket::in_foreground);
    store.set_epoch_deadline(u64::from(foreground));
    store.data_mut().cpu = ticket;
}

/// Take the invocation's ticket back from `store`, to end it; a store that
/// were somehow entered again would be interrupted at once.
fn disarm(store: &mut Store<HostState>) -> Option<CpuTicket> {
    store.data_mut().cpu.take()
}

fn classify(
    class: FailureClass,
    error: &wasmtime::Error,
    state: &HostState,
    timeout: Duration,
) -> Failure {
    let limiter = &state.limiter;
    let class = match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FailureClass::DeadlineExceeded,
        Some(Trap::StackOverflow) => FailureClass::StackOverflow,
        _ if class == FailureClass::DeadlineExceeded => class,
        _ if limiter.refused_memory() => FailureClass::OutOfMemory,
        _ if limiter.refused_table() => FailureClass::ResourceLimit,
        // wasmtime reports too many instances, tables or memories this way.
        _ if format!("{}", error.root_cause()).starts_with("resource limit exceeded") => {
            FailureClass::ResourceLimit
        }
        _ => class,
    };
    // The root cause says what happened; the wasm backtrace (frames without
    // names in release builds) goes to the debug log only.
    tracing::debug!(error.class = class.as_str(), "plugin failed: {error:?}");
    let cause = error.root_cause().to_string();
    let mut message = match class {
        FailureClass::DeadlineExceeded => format!("time limit of {timeout:?} exceeded ({cause})"),
        FailureClass::OutOfMemory => format!(
            "memory limit of {} MiB reached ({cause})",
            limiter.max_memory_bytes() >> 20
        ),
        FailureClass::ResourceLimit => format!(
            "resource limit reached (table of at most {} elements, or too many instances): {cause}",
            limiter.max_table_elements()
        ),
        _ => cause,
    };
    if let Some(stderr) = state.output.stderr_tail() {
        message.push_str("; plugin stderr: ");
        message.push_str(&stderr);
    }
    Failure::new(class, &message)
}

/// Instantiate `plugin` once without calling it, to catch failures that only
/// show at instantiation before the plugin is put in service.
pub async fn smoke(
    engine: &WasmEngine,
    plugin: &CompiledPlugin,
) -> Result<(), crate::engine::component::ComponentError> {
    let tag = PluginTag {
        name: "smoke-test".into(),
        version: plugin.info.version.as_str().into(),
    };
    let limits = InvokeLimits::default();
    let settings = engine.settings();
    let gate = Arc::new(LogGate::new(
        tag.clone(),
        Arc::new(LogBudget::unlimited()),
        0,
    ));
    let state = HostState::new(
        tag.clone(),
        Arc::default(),
        limits.publish,
        MemoryLimiter::new(
            settings.max_memory_bytes,
            settings.max_table_elements,
            settings.max_core_instances as usize,
        ),
        gate,
        false,
    );
    let ticket = engine
        .governor()
        .enter(&tag.name, Instant::now() + limits.timeout);
    let _ = ticket.admit().await;
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_callback(on_epoch);
    arm(&mut store, Some(ticket));
    plugin
        .pre
        .instantiate_async(&mut store)
        .await
        .map(drop)
        .map_err(|e| crate::engine::component::ComponentError::Instantiate(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plugin_verdicts_host_limits_on_input_and_an_open_breaker_are_final() {
        let final_classes: Vec<&str> = FailureClass::ALL
            .iter()
            .filter(|c| !c.is_retryable())
            .map(|c| c.as_str())
            .collect();
        assert_eq!(
            final_classes,
            vec![
                "permanent",
                "circuit-open",
                "payload-too-large",
                "publish-limit",
                "shutdown"
            ]
        );
    }

    #[test]
    fn class_counters_count_per_class() {
        let counters = ClassCounters::default();
        counters.bump(FailureClass::Trap);
        counters.bump(FailureClass::Trap);
        counters.bump(FailureClass::PublishLimit);
        let snap = counters.snapshot();
        assert_eq!(snap.get(FailureClass::Trap), 2);
        assert_eq!(snap.get(FailureClass::Retryable), 0);
        assert_eq!(
            snap.nonzero(),
            vec![(FailureClass::Trap, 2), (FailureClass::PublishLimit, 1)]
        );
    }

    #[test]
    fn failure_messages_are_bounded() {
        let huge = "E".repeat(50 << 20);
        let f = Failure::new(FailureClass::Permanent, &huge);
        assert!(
            f.message.len() <= MAX_FAILURE_MESSAGE + 64,
            "{}",
            f.message.len()
        );
        assert!(f.message.ends_with("more bytes)"));
    }

    #[test]
    fn a_deadline_missed_while_throttled_is_cpu_starvation() {
        let report = |class, elapsed_ms, throttled_ms| InvocationReport {
            throttled: Duration::from_millis(throttled_ms),
            elapsed: Duration::from_millis(elapsed_ms),
            ..refused_before_start(Instant::now(), Failure::new(class, "x"))
        };
        assert!(report(FailureClass::DeadlineExceeded, 1000, 250).cpu_starved());
        assert!(report(FailureClass::DeadlineExceeded, 1000, 1000).cpu_starved());
        assert!(
            !report(FailureClass::DeadlineExceeded, 1000, 100).cpu_starved(),
            "mostly its own time: a slow dependency or a runaway loop"
        );
        assert!(!report(FailureClass::DeadlineExceeded, 0, 0).cpu_starved());
        assert!(
            !report(FailureClass::Retryable, 1000, 1000).cpu_starved(),
            "only deadlines"
        );
    }
}
