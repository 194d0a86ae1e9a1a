//! From a NATS message to a settled event: build the plugin's view of it, run
//! it on a fresh instance, then commit the outbox (success), schedule a retry
//! (retryable failure), or give up (permanent failure or retries exhausted).
//!
//! Concurrency is bounded twice: a per-plugin semaphore (the plugin's
//! `max_concurrency`) and a host-wide one sized like the instance pool, so an
//! event waits for a slot instead of failing. Core NATS retries wait on a host
//! timer with no slot held, so a backing-off event never blocks other events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_nats::Client;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::delivery::RetryPolicy;
use crate::engine::WasmEngine;
use crate::engine::component::CompiledPlugin;
use crate::engine::invoke::{
    self, ClassCounters, ClassCounts, Failure, InvocationRequest, InvokeLimits,
};
use crate::host::{LogBudget, OutboundMessage, PluginTag};
use crate::nats::convert;
use crate::subject::PublishGrants;

/// Counters of one plugin, readable while the host runs.
#[derive(Debug, Default)]
pub struct PluginStats {
    received: AtomicU64,
    succeeded: AtomicU64,
    failed_attempts: AtomicU64,
    retries: AtomicU64,
    gave_up: AtomicU64,
    published: AtomicU64,
    refused_publishes: AtomicU64,
    log_dropped: AtomicU64,
    failures: ClassCounters,
    gave_up_by: ClassCounters,
    last_gave_up: std::sync::Mutex<Option<Failure>>,
}

/// A point-in-time copy of [`PluginStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Events received from NATS.
    pub received: u64,
    /// Events handled successfully (outbox committed).
    pub succeeded: u64,
    /// Attempts that failed (any class).
    pub failed_attempts: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Events given up on (permanent error or retries exhausted).
    pub gave_up: u64,
    /// Messages published from committed outboxes.
    pub published: u64,
    /// Publishes refused (not granted, reserved, invalid, over a limit).
    pub refused_publishes: u64,
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
            published: get(&self.published),
            refused_publishes: get(&self.refused_publishes),
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

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// One plugin version in service, with everything needed to run its events.
pub struct Route {
    /// Name and version.
    pub tag: PluginTag,
    /// The compiled component.
    pub compiled: Arc<CompiledPlugin>,
    /// Publish grants.
    pub grants: Arc<PublishGrants>,
    /// Per-event limits.
    pub limits: InvokeLimits,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Per-plugin concurrency cap.
    pub concurrency: Arc<Semaphore>,
    /// Log rate limit shared by the plugin's invocations.
    pub log_budget: Arc<LogBudget>,
    /// Counters.
    pub stats: Arc<PluginStats>,
}

/// Runs events; shared by every subscription of the host.
pub struct Dispatcher {
    engine: WasmEngine,
    client: Client,
    instances: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Dispatcher {
    /// A dispatcher publishing outboxes through `client`.
    pub fn new(
        engine: WasmEngine,
        client: Client,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let instances = Arc::new(Semaphore::new(engine.settings().max_instances as usize));
        Dispatcher {
            engine,
            client,
            instances,
            tasks,
            shutdown,
        }
    }

    /// Accept one core NATS message for `route`. Waits for a per-plugin slot
    /// (back-pressure on the subscription), then handles it in its own task.
    pub async fn dispatch_core(self: &Arc<Self>, route: Arc<Route>, message: async_nats::Message) {
        bump(&route.stats.received, 1);
        let Ok(permit) = route.concurrency.clone().acquire_owned().await else {
            return;
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            this.run_core(route, message, Some(permit)).await;
        });
    }

    async fn run_core(
        &self,
        route: Arc<Route>,
        message: async_nats::Message,
        mut permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let first_attempt = Instant::now();
        let mut attempt = 1u32;
        loop {
            let permit_held = match permit.take() {
                Some(p) => p,
                None => match route.concurrency.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let event = convert::core_event(&message, attempt);
            let span = tracing::info_span!(
                "event", otel.kind = "consumer", plugin = %route.tag.name, version = %route.tag.version,
                subject = %event.subject, key = %event.idempotency_key, attempt
            );
            let result = self.attempt(&route, &event).instrument(span.clone()).await;
            drop(permit_held);
            let failure = match result {
                Ok(()) => return,
                Err(failure) => failure,
            };
            let _enter = span.enter();
            let delay = route
                .retry
                .delay(attempt, failure.retry_after, &mut rand::rng());
            if failure.class.is_retryable()
                && route
                    .retry
                    .should_retry(attempt, first_attempt.elapsed(), delay)
            {
                bump(&route.stats.retries, 1);
                tracing::warn!(
                    error.class = failure.class.as_str(),
                    "attempt {attempt} failed: {}; retrying in {delay:?}",
                    failure.message
                );
                drop(_enter);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.shutdown.cancelled() => {
                        tracing::warn!(plugin = %route.tag.name, subject = %message.subject,
                            "shutting down with a core NATS retry pending; the event is dropped (core NATS is at-most-once; use a JetStream stream to keep such events)");
                        return;
                    }
                }
                attempt += 1;
                continue;
            }
            route.stats.record_give_up(&failure);
            let why = if failure.class.is_retryable() {
                format!("giving up after {attempt} attempt(s)")
            } else {
                "permanent error, not retrying".to_string()
            };
            tracing::error!(
                error.class = failure.class.as_str(),
                "{why}: {}; the event is dropped (core NATS, at-most-once)",
                failure.message
            );
            return;
        }
    }

    /// One attempt: invoke, then commit the outbox on success.
    async fn attempt(
        &self,
        route: &Route,
        event: &crate::engine::bindings::v0_1::sluice::plugin::types::Event,
    ) -> Result<(), Failure> {
        let Ok(_instance) = self.instances.acquire().await else {
            return Err(Failure {
                class: invoke::FailureClass::Instantiate,
                message: "host is shutting down".into(),
                retry_after: None,
            });
        };
        let report = invoke::invoke(
            &self.engine,
            &route.compiled,
            InvocationRequest {
                event,
                tag: route.tag.clone(),
                grants: route.grants.clone(),
                limits: route.limits,
                log_budget: route.log_budget.clone(),
                keep_logs: false,
            },
        )
        .await;
        bump(
            &route.stats.refused_publishes,
            report.refused_publishes.into(),
        );
        bump(&route.stats.log_dropped, report.log_dropped.into());
        if let Err(failure) = report.outcome {
            bump(&route.stats.failed_attempts, 1);
            route.stats.failures.bump(failure.class);
            return Err(failure);
        }
        self.commit(route, &event.idempotency_key, report.published)
            .await?;
        bump(&route.stats.succeeded, 1);
        tracing::debug!(elapsed = ?report.elapsed, "handled");
        Ok(())
    }

    async fn commit(
        &self,
        route: &Route,
        key: &str,
        outbox: Vec<OutboundMessage>,
    ) -> Result<(), Failure> {
        let count = outbox.len() as u64;
        for (index, message) in outbox.into_iter().enumerate() {
            let headers = convert::outgoing_headers(&message, key, &route.tag.name, index);
            self.client
                .publish_with_headers(message.subject.clone(), headers, message.payload)
                .await
                .map_err(|e| Failure {
                    class: invoke::FailureClass::Retryable,
                    message: format!("publishing the outbox to `{}` failed: {e}", message.subject),
                    retry_after: None,
                })?;
        }
        bump(&route.stats.published, count);
        Ok(())
    }
}
