//! Core NATS delivery: at-most-once from the broker, so the host itself
//! retries. A retry waits on a host timer with no concurrency slot held, so a
//! backing-off event never blocks other events. After the last attempt the
//! event goes to the DLQ (core NATS cannot hold it anywhere else).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::Instrument;

use super::{Dispatcher, Route, bump, dead_letter_for, trace_id};
use crate::delivery::breaker::{Admission, WhenOpen};
use crate::delivery::dedup::Claim;
use crate::engine::invoke::{Failure, FailureClass};
use crate::nats::convert;

impl Dispatcher {
    /// Accept one core NATS message for `route`. Waits for a per-plugin slot
    /// (back-pressure on the subscription), then handles it in its own task.
    /// At shutdown it still waits, until the shutdown deadline.
    pub async fn dispatch_core(self: &Arc<Self>, route: Arc<Route>, message: async_nats::Message) {
        let permit = tokio::select! {
            permit = route.concurrency.clone().acquire_owned() => permit,
            _ = self.abort.cancelled() => {
                tracing::warn!(plugin = %route.tag.name, subject = %message.subject,
                    "shutdown deadline reached before a core NATS event could start; it is dropped (core NATS is at-most-once)");
                return;
            }
        };
        let Ok(permit) = permit else {
            return;
        };
        self.start_core(route, message, permit);
    }

    /// Handle one core NATS message for `route` in its own task, holding
    /// `permit` (one of the route's slots). The subscription reader calls
    /// this directly when a slot is free and nothing is buffered, saving
    /// the hop through the buffer.
    pub fn start_core(
        self: &Arc<Self>,
        route: Arc<Route>,
        message: async_nats::Message,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        bump(&route.stats.received, 1);
        route.plugin_metrics.event_received();
        let this = self.clone();
        let in_flight = super::InFlight::new(route.clone());
        self.tasks.spawn(async move {
            let _in_flight = in_flight;
            this.run_core(route, message, permit).await;
        });
    }

    async fn run_core(
        &self,
        route: Arc<Route>,
        message: async_nats::Message,
        first_permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let key = Self::key_for(
            &route,
            &message.subject,
            &message.payload,
            message.headers.as_ref(),
            None,
        );
        let trace = trace_id(message.headers.as_ref());
        // The lease covers every attempt: retries happen in this process.
        let lease_span =
            route.retry.max_elapsed.unwrap_or(Duration::from_secs(300)) + route.limits.timeout * 2;
        let lease = match self.claim(&route, &key, lease_span).await {
            Ok(Some(Claim::Completed)) => {
                tracing::debug!(plugin = %route.tag.name, key, "duplicate of a completed event; skipped");
                return;
            }
            Ok(Some(Claim::Busy { .. })) => {
                tracing::info!(plugin = %route.tag.name, key, "duplicate of an event in progress; skipped");
                return;
            }
            Ok(Some(Claim::Acquired(lease))) => Some(lease),
            Ok(None) | Err(()) => None,
        };

        let started = Instant::now();
        let mut first_failure: Option<SystemTime> = None;
        let mut permit = Some(first_permit);
        let mut attempt = 1u32;
        loop {
            let slot = match permit.take() {
                Some(p) => p,
                None => match route.concurrency.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let event = convert::core_event(&message, &key, attempt);
            let span = tracing::info_span!(
                "event", otel.kind = "consumer", plugin = %route.tag.name, version = %route.tag.version,
                subject = %event.subject, key = %key, attempt, trace_id = %trace
            );
            let result = match route.admit() {
                Admission::Rejected { .. } => {
                    bump(&route.stats.breaker_rejected, 1);
                    if route.when_open == WhenOpen::Shed {
                        drop(slot);
                        bump(&route.stats.shed, 1);
                        span.in_scope(|| {
                            tracing::debug!(
                                "circuit breaker open: event shed (when_open = \"shed\")"
                            )
                        });
                        self.release_failed(lease.as_ref(), SystemTime::now()).await;
                        return;
                    }
                    Err(Failure {
                        class: FailureClass::CircuitOpen,
                        message: "the plugin's circuit breaker is open (its dependency looks down); core NATS cannot hold the event, so it is dead-lettered for replay".into(),
                        retry_after: None,
                    })
                }
                Admission::Allowed | Admission::Probe => {
                    self.attempt(&route, &key, &event)
                        .instrument(span.clone())
                        .await
                }
            };
            drop(slot);
            let failure = match result {
                Ok(()) => {
                    self.complete(lease.as_ref()).await;
                    return;
                }
                Err(failure) => failure,
            };
            let now = SystemTime::now();
            let first = *first_failure.get_or_insert(now);
            let delay = route
                .retry
                .delay(attempt, failure.retry_after, &mut rand::rng());
            if failure.class.is_retryable()
                && route.retry.should_retry(attempt, started.elapsed(), delay)
            {
                bump(&route.stats.retries, 1);
                self.metrics.retry_scheduled(&route.tag.name);
                span.in_scope(|| {
                    tracing::warn!(
                        error.class = failure.class.as_str(),
                        "attempt {attempt} failed: {}; retrying in {delay:?}",
                        failure.message
                    )
                });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.shutdown.cancelled() => {
                        span.in_scope(|| tracing::warn!(
                            "shutting down with a core NATS retry pending; the event is dropped (core NATS is at-most-once; use mode = \"jetstream\" to keep such events)"
                        ));
                        self.release_failed(lease.as_ref(), first).await;
                        return;
                    }
                }
                attempt += 1;
                continue;
            }
            route.stats.record_give_up(&failure);
            let letter = dead_letter_for(
                &route,
                &message,
                None,
                &key,
                attempt,
                &failure,
                (first, now),
                &trace,
            );
            if let Err(e) = self
                .dead_letter(&route, &letter)
                .instrument(span.clone())
                .await
            {
                span.in_scope(|| {
                    tracing::error!(
                        error.class = failure.class.as_str(),
                        "EVENT LOST: gave up after {attempt} attempt(s) ({}) and {e}; core NATS cannot redeliver it",
                        failure.message
                    )
                });
            }
            self.release_failed(lease.as_ref(), now).await;
            return;
        }
    }
}

/// The `Sluice-Replay` count of a message (0 if never replayed).
pub(crate) fn replay_count(headers: Option<&async_nats::HeaderMap>) -> u32 {
    headers
        .and_then(|h| h.get(crate::delivery::dead_letter::header::REPLAY))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}
