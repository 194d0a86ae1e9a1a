//! One attempt of one event: run it on an instance of the plugin's current
//! version, then commit the outbox on success. What to do with the outcome
//! (ack, retry, dead-letter) is the trigger's business (see
//! [`crate::trigger`] and [`crate::delivery::settle`]); this module only
//! runs attempts, publishes dead letters, and keeps each plugin's
//! [`Route`] (its version, limits, breaker and counters).
//!
//! Concurrency is bounded twice: a per-plugin semaphore (the plugin's
//! `max_concurrency`) and a host-wide one sized like the instance pool, so an
//! event waits for a slot instead of failing.

pub mod warm;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_nats::{Client, HeaderMap};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::contract;
use crate::delivery::RetryPolicy;
use crate::delivery::breaker::{
    Admission, CircuitBreaker, Outcome as BreakerOutcome, State as BreakerState, Transition,
    WhenOpen,
};
use crate::delivery::dead_letter::{self, DeadLetter, DlqError};
use crate::engine::WasmEngine;
use crate::engine::component::CompiledPlugin;
use crate::engine::governor::CpuProfile;
use crate::engine::invoke::{
    self, ClassCounters, ClassCounts, Failure, FailureClass, InvocationRequest, InvokeLimits,
};
use crate::host::http::HttpPolicy;
use crate::host::requester::Requester;
use crate::host::state::{self, StateSpace};
use crate::host::{LogBudget, OutboundMessage, PluginConfig, PluginTag};
use crate::manifest::KeySource;
use crate::nats::convert;
use crate::nats::election::{self, PublishOutlook};
use crate::subject::PublishGrants;
use crate::telemetry::Metrics;
use crate::telemetry::trace::Propagation;

/// Counters of one plugin, readable while the host runs.
#[derive(Debug, Default)]
pub struct PluginStats {
    pub(crate) received: AtomicU64,
    succeeded: AtomicU64,
    failed_attempts: AtomicU64,
    pub(crate) retries: AtomicU64,
    gave_up: AtomicU64,
    dead_lettered: AtomicU64,
    dlq_failures: AtomicU64,
    published: AtomicU64,
    pub(crate) dedup_hits: AtomicU64,
    pub(crate) dedup_misses: AtomicU64,
    pub(crate) lease_conflicts: AtomicU64,
    breaker_opened: AtomicU64,
    pub(crate) breaker_rejected: AtomicU64,
    pub(crate) shed: AtomicU64,
    dropped: AtomicU64,
    refused_publishes: AtomicU64,
    refused_state: AtomicU64,
    refused_requests: AtomicU64,
    refused_http: AtomicU64,
    log_dropped: AtomicU64,
    failures: ClassCounters,
    gave_up_by: ClassCounters,
    last_gave_up: std::sync::Mutex<Option<Failure>>,
}

/// A point-in-time copy of [`PluginStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Deliveries received from NATS and started (JetStream redeliveries
    /// included; core events count once they leave the `core_buffer`).
    pub received: u64,
    /// Events handled successfully (outbox committed).
    pub succeeded: u64,
    /// Attempts that failed (any class).
    pub failed_attempts: u64,
    /// Retries scheduled (timer for core, Nak with delay for JetStream).
    pub retries: u64,
    /// Events given up on (permanent error or retries exhausted).
    pub gave_up: u64,
    /// Events whose DLQ entry was acknowledged.
    pub dead_lettered: u64,
    /// DLQ publishes that failed (JetStream events are then redelivered).
    pub dlq_failures: u64,
    /// Messages published from committed outboxes.
    pub published: u64,
    /// Deliveries skipped because their key had already completed.
    pub dedup_hits: u64,
    /// Keys claimed for handling.
    pub dedup_misses: u64,
    /// Deliveries whose key was in progress elsewhere.
    pub lease_conflicts: u64,
    /// Times the circuit breaker opened.
    pub breaker_opened: u64,
    /// Events turned away by an open breaker (core: dead-lettered or shed; JetStream: redelivered later).
    pub breaker_rejected: u64,
    /// Core events dropped because the breaker was open and the manifest says `shed`.
    pub shed: u64,
    /// Core events dropped because the plugin's buffer was full (slow consumer).
    pub dropped: u64,
    /// Publishes refused (not granted, reserved, invalid, over a limit).
    pub refused_publishes: u64,
    /// State calls refused (not granted, invalid key, over a limit).
    pub refused_state: u64,
    /// Requests refused (not granted, reserved, invalid, over the limit).
    pub refused_requests: u64,
    /// HTTP requests refused (origin not granted, private address, over a limit).
    pub refused_http: u64,
    /// Plugin log lines dropped (per-event cap or rate limit).
    pub log_dropped: u64,
    /// Failed attempts per failure class.
    pub failures: ClassCounts,
    /// Events given up on, per failure class of their last attempt.
    pub gave_up_by: ClassCounts,
}

impl PluginStats {
    /// Copy the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            received: get(&self.received),
            succeeded: get(&self.succeeded),
            failed_attempts: get(&self.failed_attempts),
            retries: get(&self.retries),
            gave_up: get(&self.gave_up),
            dead_lettered: get(&self.dead_lettered),
            dlq_failures: get(&self.dlq_failures),
            published: get(&self.published),
            dedup_hits: get(&self.dedup_hits),
            dedup_misses: get(&self.dedup_misses),
            lease_conflicts: get(&self.lease_conflicts),
            breaker_opened: get(&self.breaker_opened),
            breaker_rejected: get(&self.breaker_rejected),
            shed: get(&self.shed),
            dropped: get(&self.dropped),
            refused_publishes: get(&self.refused_publishes),
            refused_state: get(&self.refused_state),
            refused_requests: get(&self.refused_requests),
            refused_http: get(&self.refused_http),
            log_dropped: get(&self.log_dropped),
            failures: self.failures.snapshot(),
            gave_up_by: self.gave_up_by.snapshot(),
        }
    }

    /// Count an event given up on, and keep its failure (what a dead-letter
    /// record carries: class and bounded message).
    pub fn record_give_up(&self, failure: &Failure) {
        bump(&self.gave_up, 1);
        self.gave_up_by.bump(failure.class);
        *self.last_gave_up.lock().expect("stats lock") = Some(failure.clone());
    }

    /// The failure of the last event given up on.
    pub fn last_gave_up(&self) -> Option<Failure> {
        self.last_gave_up.lock().expect("stats lock").clone()
    }
}

/// Count a core event dropped because the plugin's buffer was full.
pub(crate) fn count_dropped(route: &Route) {
    bump(&route.stats.dropped, 1);
    route.metrics.core_dropped(&route.tag.name);
}

/// Why a confirmed outbox publish failed, and what to do about it.
fn confirm_failure(
    error: &async_nats::jetstream::context::PublishError,
    outlook: PublishOutlook,
) -> String {
    match outlook {
        PublishOutlook::NoStreamCaptures => format!(
            "{error}; no stream captures the subject (with `[outbox] confirm` on, a JetStream stream must capture the subject; set `confirm = false` in the manifest to publish to a core NATS subject)"
        ),
        PublishOutlook::MayRecover => format!(
            "{error}, still after publishing it again for {:?} (a stream without a leader that long: check the NATS cluster's health)",
            election::RIDE_OUT
        ),
        PublishOutlook::Refused => error.to_string(),
    }
}

pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// One plugin version in service, with everything needed to run its events.
pub struct Route {
    /// Name and version.
    pub tag: PluginTag,
    /// The compiled component.
    pub compiled: Arc<CompiledPlugin>,
    /// The plugin's CPU profile in the engine's governor.
    pub cpu: CpuProfile,
    /// Publish grants.
    pub grants: Arc<PublishGrants>,
    /// Configuration and secrets (`config.get`).
    pub config: Arc<PluginConfig>,
    /// The plugin's state key space; `None`: state not granted.
    pub state: Option<StateSpace>,
    /// Subjects the plugin may send requests to; `None`: none.
    pub request_grants: Option<Arc<PublishGrants>>,
    /// What the plugin may reach over HTTP; `None`: nothing granted.
    pub http: Option<Arc<HttpPolicy>>,
    /// Per-event limits.
    pub limits: InvokeLimits,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Per-plugin concurrency cap.
    pub concurrency: Arc<Semaphore>,
    /// The size of that cap (`max_concurrency`).
    pub max_concurrency: usize,
    /// Log rate limit shared by the plugin's invocations.
    pub log_budget: Arc<LogBudget>,
    /// Idle instances to reuse (`isolation = "reuse"`); `None`: a fresh
    /// instance per event.
    pub warm: Option<Arc<warm::WarmPool>>,
    /// Counters.
    pub stats: Arc<PluginStats>,
    /// Manifest override of the key source.
    pub key_source: Option<KeySource>,
    /// Headers folded into the content hash.
    pub hash_headers: Vec<String>,
    /// Whether keys are deduplicated.
    pub dedup: bool,
    /// Wait for JetStream acks on outbox publishes.
    pub confirm_publishes: bool,
    /// Events of this version being handled right now.
    pub in_flight: std::sync::atomic::AtomicUsize,
    /// How long its recent invocations took (ns, smoothed): decides whether
    /// an event is first polled in the task that received it.
    pub recent_call_ns: std::sync::atomic::AtomicU64,
    /// The plugin's circuit breaker (shared by all its versions).
    pub breaker: Arc<std::sync::Mutex<CircuitBreaker>>,
    /// What a core event meets while the breaker is open.
    pub when_open: WhenOpen,
    /// The host's metrics (breaker transitions, drops).
    pub metrics: crate::telemetry::Metrics,
    /// This plugin's hot-path metric handles.
    pub plugin_metrics: crate::telemetry::metrics::PluginMetrics,
}

/// Invocations shorter than this, on average lately, let their plugin's
/// core events be first polled in the task that received them (see
/// [`crate::trigger::poll_here_first`]): a warm instance's call (a few µs).
/// A fresh instance (~35 µs) is kept off the reader: run there, the
/// instantiations of one subscription would share one worker while the
/// other idles (measured: JetStream fresh-instance rows lost a third).
pub const INLINE_BELOW: Duration = Duration::from_micros(20);

/// What a version's invocations are taken to cost before any ran: long,
/// so a new plugin's events get tasks until its calls proved short (a
/// warm no-op's average falls below [`INLINE_BELOW`] within ~30 events).
pub const UNKNOWN_CALL: Duration = Duration::from_millis(1);

impl Route {
    /// Note how long an invocation took.
    pub fn note_call(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let before = self.recent_call_ns.load(Ordering::Relaxed);
        // A lost update between two workers only delays the average a little.
        self.recent_call_ns
            .store(before - before / 8 + took / 8, Ordering::Relaxed);
    }

    /// Whether this plugin's invocations are short lately (so an event may
    /// be polled where it was received; see [`INLINE_BELOW`]).
    pub fn calls_are_short(&self) -> bool {
        self.recent_call_ns.load(Ordering::Relaxed) < INLINE_BELOW.as_nanos() as u64
    }

    /// Events of this version being handled right now (a retired version
    /// drains until this reaches zero).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Ask the breaker whether an event may run now (logging any transition).
    pub fn admit(&self) -> Admission {
        let mut breaker = self.breaker.lock().expect("breaker lock");
        if breaker.admits_all() {
            return Admission::Allowed;
        }
        let (admission, transition) = breaker.admit(Instant::now());
        drop(breaker);
        self.log_transition(transition);
        admission
    }

    /// How many events to fetch now, or how long to wait (see
    /// [`CircuitBreaker::fetch_budget`]): the `wanted` batch while the
    /// breaker is closed; only the probes while half-open.
    pub fn fetch_budget(&self, wanted: usize) -> Result<usize, Duration> {
        self.breaker
            .lock()
            .expect("breaker lock")
            .fetch_budget(Instant::now(), wanted)
    }

    /// The fewest messages one JetStream pull asks for: twice
    /// `max_concurrency`, so the next events are on their way while the
    /// slots are busy. A fast plugin's pulls grow past it (see
    /// [`crate::trigger::pull_depth`]).
    pub fn pull_batch_floor(&self) -> usize {
        self.max_concurrency.max(1) * 2
    }

    /// A probe admitted by [`admit`](Self::admit) that did not run: its
    /// slot goes back.
    pub fn cancel_probe(&self) {
        self.breaker.lock().expect("breaker lock").cancel_probe();
    }

    /// Tell the breaker how an attempt admitted as `admission` ended;
    /// `starved`: it missed its deadline mostly because the CPU governor held
    /// it back (the host's contention, not the plugin's dependency), which
    /// counts as neither success nor failure. `now`: when the attempt ended.
    pub fn record_outcome(
        &self,
        failure: Option<&Failure>,
        admission: Admission,
        starved: bool,
        now: Instant,
    ) {
        let outcome = match failure {
            None => BreakerOutcome::Success,
            Some(_) if starved => BreakerOutcome::Neutral,
            Some(f)
                if matches!(
                    f.class,
                    FailureClass::Retryable | FailureClass::DeadlineExceeded
                ) =>
            {
                BreakerOutcome::Failure
            }
            Some(_) => BreakerOutcome::Neutral,
        };
        let transition = self
            .breaker
            .lock()
            .expect("breaker lock")
            .record(outcome, admission, now);
        self.log_transition(transition);
    }

    fn log_transition(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        self.metrics
            .breaker_transition(&self.tag.name, t.to.as_str());
        if t.to == BreakerState::Open {
            bump(&self.stats.breaker_opened, 1);
            tracing::warn!(plugin = %self.tag.name, "circuit breaker {} -> open: the plugin's dependency looks down; pausing its events", t.from.as_str());
        } else {
            tracing::info!(plugin = %self.tag.name, "circuit breaker {} -> {}", t.from.as_str(), t.to.as_str());
        }
    }
}

/// Counts an event as in flight on a route for as long as it lives.
pub(crate) struct InFlight(Arc<Route>);

impl InFlight {
    pub(crate) fn new(route: Arc<Route>) -> Self {
        route.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(route)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs attempts; shared by every trigger of the host.
pub struct Dispatcher {
    engine: WasmEngine,
    client: Client,
    js: async_nats::jetstream::Context,
    instances: Arc<Semaphore>,
    metrics: Metrics,
    warm_pools: warm::WarmPools,
}

impl Dispatcher {
    /// A dispatcher publishing through `client`.
    pub fn new(engine: WasmEngine, client: Client) -> Self {
        let instances = Arc::new(Semaphore::new(engine.settings().max_instances as usize));
        let js = async_nats::jetstream::new(client.clone());
        Dispatcher {
            engine,
            client,
            js,
            instances,
            metrics: Metrics::new(),
            warm_pools: warm::WarmPools::default(),
        }
    }

    /// Report to `metrics` (by default, to a set nobody reads).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The JetStream context of the host's connection.
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.js
    }

    /// The host's NATS connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// One attempt: invoke, then commit the outbox on success.
    pub(crate) async fn attempt(
        &self,
        route: &Route,
        key: &str,
        event: &contract::Event,
        admission: Admission,
    ) -> Result<(), Failure> {
        let _in_flight = route.plugin_metrics.attempt_started();
        let started = Instant::now();
        let warm = route.warm.as_ref().and_then(|pool| pool.take());
        // The time limit runs from when the invocation can start: a wait for
        // an instance permit must not eat it (a warm instance waits for none).
        let (warm, permit, invocation_started) = match warm {
            Some((warm, permit)) => (Some(warm), permit, started),
            None => match Box::pin(self.instance_permit(route)).await {
                Some(permit) => (None, permit, Instant::now()),
                None => {
                    return Err(Failure {
                        class: FailureClass::Instantiate,
                        message: "host is shutting down".into(),
                        retry_after: None,
                    });
                }
            },
        };
        // Boxed: the invocation's future is large, and every event's task
        // would otherwise carry (and copy) it from the start.
        let (report, warm) = Box::pin(invoke::invoke_reusing(
            &self.engine,
            &route.compiled,
            InvocationRequest {
                event,
                tag: &route.tag,
                cpu: Some(&route.cpu),
                started: Some(invocation_started),
                grants: &route.grants,
                config: &route.config,
                state: route.state.as_ref(),
                requester: route
                    .request_grants
                    .clone()
                    .map(|grants| Requester::new(self.client.clone(), grants)),
                http: route.http.as_ref(),
                limits: route.limits,
                log_budget: &route.log_budget,
                keep_logs: false,
            },
            warm,
            route.warm.is_some(),
        ))
        .await;
        match (warm, &route.warm) {
            (Some(warm), Some(pool)) => {
                pool.put(warm, permit);
                self.warm_pools.idle_added();
            }
            _ => drop(permit),
        }
        route.note_call(report.elapsed);
        let name = &route.tag.name;
        if !report.instantiate_time.is_zero() {
            route.plugin_metrics.instantiated(report.instantiate_time);
        }
        bump(
            &route.stats.refused_publishes,
            report.refused_publishes.into(),
        );
        bump(&route.stats.log_dropped, report.log_dropped.into());
        bump(&route.stats.refused_state, report.refused_state.into());
        bump(
            &route.stats.refused_requests,
            report.refused_requests.into(),
        );
        bump(&route.stats.refused_http, report.refused_http.into());
        self.metrics
            .sandbox_refusals(name, report.refused_publishes, report.log_dropped);
        self.metrics.capability_refusals(
            name,
            &[
                ("publish", report.refused_publishes),
                ("state", report.refused_state),
                ("request", report.refused_requests),
                ("http", report.refused_http),
            ],
        );
        let starved = report.cpu_starved();
        // The invocation's end, read once by the invocation itself: an
        // attempt that commits nothing ends there.
        let invoked = invocation_started + report.elapsed;
        if let Err(failure) = report.outcome {
            bump(&route.stats.failed_attempts, 1);
            route.stats.failures.bump(failure.class);
            route.record_outcome(Some(&failure), admission, starved, invoked);
            self.metrics
                .event_handled(name, failure.class.as_str(), invoked - started);
            return Err(failure);
        }
        let committing = report.state_writes.is_some() || !report.published.is_empty();
        // State first: a compare-and-swap conflict fails the attempt before
        // anything is published.
        if let Some((space, writes)) = report.state_writes {
            Box::pin(state::commit(&space, key, &route.tag.name, writes))
                .await
                .map_err(|e| {
                    let class = match e {
                        state::CommitError::Conflict { .. } => FailureClass::StateConflict,
                        state::CommitError::Unavailable { .. } => FailureClass::Retryable,
                    };
                    Failure::new(class, &e.to_string())
                })
                .inspect_err(|failure| {
                    bump(&route.stats.failed_attempts, 1);
                    route.stats.failures.bump(failure.class);
                    route.record_outcome(Some(failure), admission, false, Instant::now());
                    self.metrics.event_handled(name, "state", started.elapsed());
                })?;
        }
        if !report.published.is_empty() {
            // Boxed: publishing's future is large, and an event that
            // publishes nothing need not carry (and copy) it.
            let reply = event.delivery.reply_to.as_deref();
            Box::pin(self.commit(
                route,
                key,
                report.published,
                &Propagation::of_event(event),
                reply,
            ))
            .await
            .inspect_err(|failure| {
                bump(&route.stats.failed_attempts, 1);
                route.record_outcome(Some(failure), admission, false, Instant::now());
                self.metrics
                    .event_handled(name, "outbox", started.elapsed());
            })?;
        }
        let ended = if committing { Instant::now() } else { invoked };
        route.record_outcome(None, admission, false, ended);
        bump(&route.stats.succeeded, 1);
        route.plugin_metrics.handled_ok(ended - started);
        tracing::debug!(elapsed = ?report.elapsed, "handled");
        Ok(())
    }

    /// A host-wide instance permit for a fresh instance. When none is free
    /// but some plugin's warm instances sit idle, those are evicted first.
    /// `None` when the host is shutting down.
    async fn instance_permit(&self, route: &Route) -> Option<OwnedSemaphorePermit> {
        if let Some(pool) = &route.warm {
            self.warm_pools.register(pool);
        }
        loop {
            match self.instances.clone().try_acquire_owned() {
                Ok(permit) => return Some(permit),
                Err(TryAcquireError::Closed) => return None,
                Err(TryAcquireError::NoPermits) => {
                    if self.warm_pools.evict_one() {
                        continue;
                    }
                    // Wait for a permit, or for an instance going idle
                    // (holding its permit) to evict. Listen before the last
                    // look, so an instance put back meanwhile is not missed.
                    let idle = self.warm_pools.wait_for_idle();
                    tokio::pin!(idle);
                    idle.as_mut().enable();
                    if self.warm_pools.evict_one() {
                        continue;
                    }
                    tokio::select! {
                        permit = self.instances.clone().acquire_owned() => return permit.ok(),
                        () = idle => {}
                    }
                }
            }
        }
    }

    /// Send a successful attempt's outbox. With `confirm_publishes`, every
    /// message is a JetStream publish and all acks are awaited (pipelined).
    /// Each message continues the event's trace (`traceparent`).
    async fn commit(
        &self,
        route: &Route,
        key: &str,
        outbox: Vec<OutboundMessage>,
        trace: &Propagation,
        reply: Option<&str>,
    ) -> Result<(), Failure> {
        let count = outbox.len() as u64;
        let fail = |subject: &str, e: String| Failure {
            class: FailureClass::Retryable,
            message: format!("publishing the outbox to `{subject}` failed: {e}"),
            retry_after: None,
        };
        // An answer to the event's request goes to the requester's inbox on
        // core NATS (no stream captures `_INBOX.`), whatever confirm says.
        let is_reply = |m: &OutboundMessage| reply == Some(m.subject.as_str());
        if route.confirm_publishes {
            let mut pending = Vec::with_capacity(outbox.len());
            for (index, message) in outbox.into_iter().enumerate() {
                let mut headers = convert::outgoing_headers(&message, key, &route.tag, index);
                trace.apply(&mut headers);
                if is_reply(&message) {
                    self.client
                        .publish_with_headers(message.subject.clone(), headers, message.payload)
                        .await
                        .map_err(|e| fail(&message.subject, e.to_string()))?;
                    continue;
                }
                let ack = self
                    .js
                    .publish_with_headers(message.subject.clone(), headers, message.payload.clone())
                    .await;
                pending.push((index, message, ack));
            }
            for (index, message, ack) in pending {
                let acked = match ack {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                if let Err(e) = acked {
                    Box::pin(self.confirm_again(route, key, trace, index, &message, e))
                        .await
                        .map_err(|(e, outlook)| {
                            fail(&message.subject, confirm_failure(&e, outlook))
                        })?;
                }
            }
        } else {
            for (index, message) in outbox.into_iter().enumerate() {
                let mut headers = convert::outgoing_headers(&message, key, &route.tag, index);
                trace.apply(&mut headers);
                self.client
                    .publish_with_headers(message.subject.clone(), headers, message.payload)
                    .await
                    .map_err(|e| fail(&message.subject, e.to_string()))?;
            }
        }
        bump(&route.stats.published, count);
        route.plugin_metrics.published(count);
        Ok(())
    }

    /// A confirmed publish of the outbox message at `index` failed with
    /// `error`: while the failure is transient (a stream electing a leader,
    /// a lost ack, a connection failing over), publish it again with the
    /// same headers, so the same `Nats-Msg-Id` (the stream drops a copy
    /// that did land), with backoff for at most [`election::RIDE_OUT`]; the
    /// last error and why it was not tried again if it is not confirmed by
    /// then.
    async fn confirm_again(
        &self,
        route: &Route,
        key: &str,
        trace: &Propagation,
        index: usize,
        message: &OutboundMessage,
        mut error: async_nats::jetstream::context::PublishError,
    ) -> Result<(), (async_nats::jetstream::context::PublishError, PublishOutlook)> {
        let mut backoff = election::ElectionBackoff::new(election::RIDE_OUT);
        loop {
            let outlook = election::publish_outlook(&self.js, &message.subject, &error).await;
            if outlook != PublishOutlook::MayRecover || !backoff.pause().await {
                return Err((error, outlook));
            }
            tracing::debug!(subject = %message.subject, "confirmed publish failed ({error}); publishing again");
            let mut headers = convert::outgoing_headers(message, key, &route.tag, index);
            trace.apply(&mut headers);
            let acked = match self
                .js
                .publish_with_headers(message.subject.clone(), headers, message.payload.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(_) => return Ok(()),
                Err(e) => error = e,
            }
        }
    }

    /// Publish a dead letter and wait for its ack.
    pub(crate) async fn dead_letter(
        &self,
        route: &Route,
        letter: &DeadLetter,
    ) -> Result<(), DlqError> {
        match dead_letter::publish(&self.js, letter).await {
            Ok(()) => {
                bump(&route.stats.dead_lettered, 1);
                self.metrics.dead_lettered(&route.tag.name, true);
                tracing::error!(
                    error.class = %letter.error_class, attempts = letter.attempts,
                    dlq = %dead_letter::dlq_subject(&route.tag.name),
                    "dead-lettered after {} attempt(s): {}", letter.attempts, letter.error
                );
                Ok(())
            }
            Err(e) => {
                bump(&route.stats.dlq_failures, 1);
                self.metrics.dead_lettered(&route.tag.name, false);
                Err(e)
            }
        }
    }
}

/// An event's trace id ([`trace_id`]): the `traceparent`'s when the event
/// has one, else generated only when first asked for (a line logged while
/// the event is handled, a dead letter), so most events never make one.
#[derive(Debug)]
pub struct LazyTraceId {
    id: std::sync::OnceLock<String>,
}

impl LazyTraceId {
    /// The trace id of an event with `headers`.
    pub fn of(headers: Option<&HeaderMap>) -> Self {
        let id = std::sync::OnceLock::new();
        if let Some(given) = traceparent_id(headers) {
            let _ = id.set(given);
        }
        LazyTraceId { id }
    }

    /// The id (the same on every call).
    pub fn get(&self) -> &str {
        self.id
            .get_or_init(|| crate::delivery::key::hex_id(rand::random::<u128>()))
    }
}

impl std::fmt::Display for LazyTraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

/// The W3C trace id of `traceparent`, else a fresh random one.
pub fn trace_id(headers: Option<&HeaderMap>) -> String {
    traceparent_id(headers).unwrap_or_else(|| crate::delivery::key::hex_id(rand::random::<u128>()))
}

/// The trace id of a well-formed `traceparent` header.
fn traceparent_id(headers: Option<&HeaderMap>) -> Option<String> {
    let value = headers?.get("traceparent")?.as_str();
    let mut parts = value.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    let well_formed = matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(_), Some(_), None)
    ) && id.len() == 32
        && id.chars().all(|c| c.is_ascii_hexdigit());
    well_formed.then(|| id.to_ascii_lowercase())
}

/// The dead letter of `message` after its last failed attempt, for either
/// delivery mode (`source` is the JetStream stream and sequence).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dead_letter_for(
    route: &Route,
    message: &async_nats::Message,
    source: Option<(&str, u64)>,
    key: &str,
    attempts: u32,
    failure: &Failure,
    (first_failure, last_failure): (SystemTime, SystemTime),
    trace_id: &str,
) -> DeadLetter {
    DeadLetter {
        plugin: route.tag.name.to_string(),
        version: route.tag.version.to_string(),
        subject: message.subject.to_string(),
        headers: header_pairs(message.headers.as_ref()),
        payload: message.payload.clone(),
        stream: source.map(|(stream, _)| stream.to_string()),
        sequence: source.map(|(_, seq)| seq),
        attempts,
        error_class: failure.class.as_str().to_string(),
        error: failure.message.clone(),
        key: key.to_string(),
        first_failure,
        last_failure,
        trace_id: trace_id.to_string(),
        replay: dead_letter::replay_count(message.headers.as_ref()),
    }
}

/// Headers as (name, value) pairs, for dead letters.
fn header_pairs(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    convert::headers_to_vec(headers)
        .into_iter()
        .map(|h| (h.name, h.value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_comes_from_traceparent_or_is_generated() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        );
        assert_eq!(trace_id(Some(&h)), "4bf92f3577b34da6a3ce929d0e0e4736");
        let generated = trace_id(None);
        assert_eq!(generated.len(), 32);
        assert_ne!(generated, trace_id(None));
        // Not four dash-separated parts, or not 32 hex digits: not used.
        for malformed in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-02",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", malformed);
            let id = trace_id(Some(&h));
            assert!(
                id.len() == 32 && !id.starts_with("4bf92f35"),
                "{malformed}: {id}"
            );
        }
    }

    #[test]
    fn a_lazy_trace_id_is_generated_once_and_kept() {
        let lazy = LazyTraceId::of(None);
        let first = lazy.get().to_string();
        assert_eq!(first.len(), 32);
        assert_eq!(lazy.get(), first);
        assert_eq!(lazy.to_string(), first);
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert_eq!(
            LazyTraceId::of(Some(&h)).get(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
