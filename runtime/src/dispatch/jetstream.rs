//! JetStream delivery: at-least-once. The event is acknowledged only after
//! the handler succeeded and its outbox was committed. A retry is a Nak with
//! delay, so it survives a host crash, and the attempt the plugin sees is the
//! server's delivery count. After the policy gives up, the event is published
//! to the DLQ, and only once that publish is acknowledged is the original
//! terminated; if the DLQ is unavailable the event is redelivered later.
//!
//! Messages are pulled in bounded batches ([`Dispatcher::consume_jetstream`])
//! so that shutdown can settle every message the server handed over: each
//! batch is read to its end, and a message that arrives once shutdown began is
//! Nak'ed at once (redelivered to another host) instead of waiting for
//! `ack_wait`. Attempts still running at the shutdown deadline are abandoned
//! and Nak'ed too.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Dispatcher, Route, bump, dead_letter_for, trace_id};
use crate::delivery::breaker::Admission;
use crate::delivery::dedup::{Claim, epoch_ms};
use crate::engine::bindings::v0_1::sluice::plugin::types;
use crate::nats::convert;

/// Delay before redelivery when the host cannot decide now (store or DLQ down).
const UNSETTLED_RETRY: Duration = Duration::from_secs(2);
/// How long a lease outlasts the attempt time limit (outbox commit, acks).
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// How long one pull request waits for messages: bounds how long shutdown
/// waits for the last batch to end.
const BATCH_EXPIRES: Duration = Duration::from_secs(1);
/// Pull requests outstanding at once: one being consumed, one on its way.
const PULLS_IN_FLIGHT: usize = 2;

/// One pull request, its batch read to the end into `to`.
async fn pull_batch(
    consumer: PullConsumer,
    max: usize,
    to: tokio::sync::mpsc::Sender<Message>,
) -> Result<(), String> {
    let mut messages = consumer
        .batch()
        .max_messages(max)
        .expires(BATCH_EXPIRES)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    while let Some(next) = messages.next().await {
        match next {
            Ok(message) => {
                if let Err(unsent) = to.send(message).await {
                    // The consumer loop is gone (cannot happen while pulls
                    // run); hand the message back rather than drop it.
                    ack(&unsent.0, AckKind::Nak(None)).await;
                }
            }
            Err(e) => tracing::debug!("JetStream batch: {e}"),
        }
    }
    Ok(())
}

impl Dispatcher {
    /// Pull and dispatch messages for the plugin in `slot` until `stop`
    /// (plugin removed or resubscribed) or shutdown.
    ///
    /// Each pull asks for one batch of twice `max_concurrency` messages and runs in
    /// its own task, which reads the batch to its end; [`PULLS_IN_FLIGHT`]
    /// pulls overlap, so the next messages are on their way while the
    /// previous ones run, and the server's round trip never idles the
    /// plugin. Messages wait in the host for free slots; everything beyond
    /// the batches in flight waits in the stream, not in host memory, its
    /// delivery count unchanged. Nothing is pulled while the circuit breaker
    /// is open, and only one pull (of the probes) while it is half-open.
    /// When stopping, no new pull starts, the ones in flight are read to
    /// their end, and messages not started are Nak'ed at once rather than
    /// left to `ack_wait`.
    pub async fn consume_jetstream(
        self: &Arc<Self>,
        slot: Arc<ArcSwap<Route>>,
        consumer: PullConsumer,
        stop: CancellationToken,
    ) {
        let capacity = slot.load().pull_batch_size() * PULLS_IN_FLIGHT;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(capacity);
        let mut pulls = tokio::task::JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        let mut pause_until: Option<tokio::time::Instant> = None;
        loop {
            if pause_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
                pause_until = None;
            }
            while !stop.is_cancelled() && pause_until.is_none() && pulls.len() < PULLS_IN_FLIGHT {
                let route = slot.load_full();
                match route.fetch_budget().and_then(|n| match n {
                    0 => Err(Duration::ZERO),
                    n => Ok(n),
                }) {
                    Ok(n) if pulls.is_empty() || n >= route.pull_batch_size() => {
                        pulls.spawn(pull_batch(consumer.clone(), n, tx.clone()));
                    }
                    // Half-open: the probes' pull is already out.
                    Ok(_) => break,
                    Err(wait) => {
                        pause_until =
                            Some(tokio::time::Instant::now() + wait.max(Duration::from_millis(20)));
                        break;
                    }
                }
            }
            if stop.is_cancelled() && pulls.is_empty() {
                break;
            }
            tokio::select! {
                Some(message) = rx.recv() => {
                    if stop.is_cancelled() {
                        // Removed or resubscribed (not shutdown): hand it back now.
                        ack(&message, AckKind::Nak(None)).await;
                    } else {
                        self.dispatch_jetstream(slot.load_full(), message).await;
                    }
                }
                Some(done) = pulls.join_next(), if !pulls.is_empty() => match done {
                    Ok(Ok(())) => backoff = Duration::from_millis(100),
                    Ok(Err(e)) => {
                        tracing::warn!(plugin = %slot.load().tag.name, "JetStream pull request failed: {e}; retrying in {backoff:?}");
                        pause_until = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => tracing::error!(plugin = %slot.load().tag.name, "JetStream pull task failed: {e}"),
                },
                _ = stop.cancelled(), if !stop.is_cancelled() => {}
                _ = tokio::time::sleep_until(pause_until.unwrap_or_else(tokio::time::Instant::now)), if pause_until.is_some() => {}
            }
        }
        // Every pull has ended: whatever they delivered and was not started
        // goes back.
        drop(tx);
        while let Some(message) = rx.recv().await {
            ack(&message, AckKind::Nak(None)).await;
        }
    }

    /// Accept one JetStream message for `route`: wait for a slot, then handle
    /// it in its own task. Once shutdown began, Nak it instead (not started,
    /// so another host or the next start handles it).
    pub async fn dispatch_jetstream(self: &Arc<Self>, route: Arc<Route>, message: Message) {
        bump(&route.stats.received, 1);
        route.plugin_metrics.event_received();
        let permit = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => None,
            permit = route.concurrency.clone().acquire_owned() => permit.ok(),
        };
        let Some(permit) = permit else {
            self.metrics.shutdown_requeued();
            ack(&message, AckKind::Nak(None)).await;
            return;
        };
        let this = self.clone();
        let in_flight = super::InFlight::new(route.clone());
        self.tasks.spawn(async move {
            let _in_flight = in_flight;
            this.run_jetstream(&route, &message).await;
            drop(permit);
        });
    }

    async fn run_jetstream(&self, route: &Route, message: &Message) {
        let info = match message.info() {
            Ok(info) => info,
            Err(e) => {
                tracing::error!(plugin = %route.tag.name, "not a JetStream message ({e}); terminating it");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let (stream, sequence) = (info.stream.to_string(), info.stream_sequence);
        let attempt = u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1);
        let published = SystemTime::UNIX_EPOCH
            + Duration::from_nanos(
                u64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0),
            );
        let key = Self::key_for(
            route,
            &message.subject,
            &message.payload,
            message.headers.as_ref(),
            Some((&stream, sequence)),
        );
        let trace = trace_id(message.headers.as_ref());
        let span = tracing::info_span!(
            "event", otel.kind = "consumer", plugin = %route.tag.name, version = %route.tag.version,
            subject = %message.subject, key = %key, attempt, stream = %stream, seq = sequence, trace_id = %trace
        );
        async {
            // The lease outlives one attempt plus its outbox commit; a crashed
            // host's lease expires after that and another delivery takes over.
            let lease = match self.claim(route, &key, route.limits.timeout + LEASE_MARGIN).await {
                Ok(Some(Claim::Completed)) => {
                    tracing::debug!("already completed; acknowledged without handling");
                    ack(message, AckKind::Ack).await;
                    return;
                }
                Ok(Some(Claim::Busy { until })) => {
                    let wait = until
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .clamp(Duration::from_millis(100), Duration::from_secs(30));
                    tracing::info!("key in progress elsewhere; redelivering in {wait:?}");
                    ack(message, AckKind::Nak(Some(wait))).await;
                    return;
                }
                Err(()) => {
                    ack(message, AckKind::Nak(Some(UNSETTLED_RETRY))).await;
                    return;
                }
                Ok(Some(Claim::Acquired(lease))) => Some(lease),
                Ok(None) => None,
            };

            let event = types::Event {
                subject: message.subject.to_string(),
                payload: message.payload.to_vec(),
                headers: convert::headers_to_vec(message.headers.as_ref()),
                idempotency_key: key.clone(),
                attempt,
                delivery: types::Delivery {
                    stream: Some(stream.clone()),
                    sequence: Some(sequence),
                    published_at_ms: Some(epoch_ms(published)),
                    reply_to: None,
                },
            };
            if let Admission::Rejected { until } = route.admit() {
                bump(&route.stats.breaker_rejected, 1);
                let wait = until
                    .saturating_duration_since(std::time::Instant::now())
                    .clamp(Duration::from_millis(100), Duration::from_secs(30));
                tracing::debug!("circuit breaker open; redelivering in {wait:?}");
                self.release_failed(lease.as_ref(), SystemTime::now()).await;
                ack(message, AckKind::Nak(Some(wait))).await;
                return;
            }
            let result = tokio::select! {
                result = self.attempt(route, &key, &event) => result,
                _ = self.abort.cancelled() => {
                    tracing::warn!("shutdown deadline reached while handling; handed back (Nak) for redelivery");
                    self.metrics.shutdown_requeued();
                    // Free the key at once, or the redelivery would wait for the lease.
                    self.release_failed(lease.as_ref(), SystemTime::now()).await;
                    ack(message, AckKind::Nak(None)).await;
                    return;
                }
            };
            let failure = match result {
                Ok(()) => {
                    // Either order is safe (a redelivery before the record
                    // lands runs again, its publishes deduplicated by id), so
                    // the two round trips overlap.
                    tokio::join!(
                        self.complete(lease.as_ref()),
                        ack(message, AckKind::Ack)
                    );
                    return;
                }
                Err(failure) => failure,
            };
            let now = SystemTime::now();
            // The first failure is in the dedup record (shared across hosts and
            // restarts); without dedup, the publish time is the bound.
            let first = lease
                .as_ref()
                .and_then(|l| l.first_failure)
                .unwrap_or(if lease.is_some() { now } else { published });
            let since_first = now.duration_since(first).unwrap_or_default();
            let delay = route.retry.delay(attempt, failure.retry_after, &mut rand::rng());
            if failure.class.is_retryable() && route.retry.should_retry(attempt, since_first, delay) {
                bump(&route.stats.retries, 1);
                self.metrics.retry_scheduled(&route.tag.name);
                tracing::warn!(
                    error.class = failure.class.as_str(),
                    "attempt {attempt} failed: {}; redelivery in {delay:?}",
                    failure.message
                );
                self.release_failed(lease.as_ref(), now).await;
                ack(message, AckKind::Nak(Some(delay))).await;
                return;
            }
            route.stats.record_give_up(&failure);
            let letter = dead_letter_for(route, message, Some((&stream, sequence)), &key, attempt, &failure, (first, now), &trace);
            self.release_failed(lease.as_ref(), now).await;
            match self.dead_letter(route, &letter).await {
                Ok(()) => ack(message, AckKind::Term).await,
                Err(e) => {
                    tracing::error!("{e}; the event stays in the stream and is redelivered in {UNSETTLED_RETRY:?}");
                    ack(message, AckKind::Nak(Some(UNSETTLED_RETRY))).await;
                }
            }
        }
        .instrument(span)
        .await;
    }
}

async fn ack(message: &Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // The server redelivers after ack_wait; dedup makes that safe.
        tracing::warn!(
            "acknowledgement ({kind:?}) not sent: {e}; the server will redeliver after ack_wait"
        );
    }
}
