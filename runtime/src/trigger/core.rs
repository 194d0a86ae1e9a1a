//! The core NATS trigger: plain subscriptions, at most once from the broker.
//!
//! Core NATS cannot slow a publisher down nor redeliver, so the host holds
//! what it received: events wait in a bounded buffer while every slot of the
//! plugin is busy (past it they are dropped and counted, never silently),
//! retries wait on in-process timers without holding a slot, and after the
//! last attempt the event goes to the DLQ, the only other place that can
//! hold it.
//!
//! Stopping (SIGTERM, the plugin removed, or resubscribed by a reload) never
//! discards what was received: the subscriptions are drained (UNSUB, then
//! what the server had already sent is read), the buffered events and the
//! retries still run until `shutdown_grace` is over (on a reload, by the new
//! version), and whatever is left then is dead-lettered with class
//! `shutdown` and counted. A reload that only changes the subjects keeps the
//! trigger ([`CoreTrigger`]): kept subjects keep their subscriptions, a
//! removed subject's reader drains into the same buffer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use futures::{FutureExt, StreamExt};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Ledger, StopSignals, TriggerContext, deliver_dead_letter};
use crate::delivery::breaker::Admission;
use crate::delivery::dead_letter::replay_count_for;
use crate::delivery::key::{Key, KeyInput, derive_key_for};
use crate::delivery::settle::{self, Claimed, Decision, Gate, GateClock, History, Mode, Outcome};
use crate::dispatch::{LazyTraceId, Route, bump, count_dropped, dead_letter_for};
use crate::engine::invoke::{Failure, FailureClass};
use crate::nats::convert;
use crate::telemetry::event_scope::{self, EventFields};

/// How long to wait for the server to confirm the subscriptions.
const SYNC_WAIT: Duration = Duration::from_secs(5);
/// How long closing a subscription may take when stopping (NATS may be down).
const UNSUBSCRIBE_WAIT: Duration = Duration::from_secs(1);
/// How often an UNSUB the client's full command queue refused is tried again.
const UNSUBSCRIBE_RETRY: Duration = Duration::from_millis(50);
/// After the deadline, how long a draining subscription may stay quiet
/// before the reader stops waiting for its end.
const QUIET_AFTER_DEADLINE: Duration = Duration::from_millis(100);
/// After the deadline, how long a draining subscription may keep delivering
/// before the reader stops taking from it.
const AFTER_DEADLINE_CAP: Duration = Duration::from_secs(1);

/// A subscription could not be made.
#[derive(Debug, Error)]
#[error("cannot subscribe to `{subject}`: {message}")]
pub struct SubscribeError {
    /// The subject.
    pub subject: String,
    /// The client's message.
    pub message: String,
}

/// What the trigger subscribes to.
pub struct CoreSetup {
    /// The host's connection.
    pub client: async_nats::Client,
    /// Plugin name.
    pub plugin: String,
    /// Subjects (wildcards allowed).
    pub subjects: Vec<String>,
    /// Queue group shared by hosts, if any.
    pub queue_group: Option<String>,
    /// Events held while every slot is busy.
    pub buffer: usize,
}

/// Subscribe and start handling events for the route in `slot` until `stop`.
pub async fn start(
    ctx: Arc<TriggerContext>,
    setup: CoreSetup,
    slot: Arc<ArcSwap<Route>>,
    stop: CancellationToken,
    subscriptions: &TaskTracker,
) -> Result<CoreTrigger, SubscribeError> {
    // Shared: every event holds it, and cloning its tokens takes their locks.
    let signals = Arc::new(StopSignals::new(&ctx, stop));
    let (tx, rx) = mpsc::channel::<async_nats::Message>(setup.buffer.max(1));
    let mut trigger = CoreTrigger {
        ctx: ctx.clone(),
        client: setup.client,
        plugin: setup.plugin,
        queue_group: setup.queue_group,
        buffer: setup.buffer,
        slot: slot.clone(),
        signals: signals.clone(),
        tx: tx.downgrade(),
        readers: HashMap::new(),
    };
    let subscribed = trigger.subscribe(&setup.subjects, &tx, subscriptions).await;
    drop(tx);
    subscriptions.spawn(drain(ctx, rx, slot, signals));
    if subscribed.is_err() {
        // What the subscriptions made so far received is still handled.
        trigger.signals.stop.cancel();
    }
    subscribed.map(|()| trigger)
}

/// A running core trigger. Its subjects can change while it runs: a reload
/// that keeps a subject keeps its subscription, so an event on it is neither
/// missed nor delivered to an old and a new subscription at once (which
/// would run it twice: a core event's default key is unique per message).
pub struct CoreTrigger {
    ctx: Arc<TriggerContext>,
    client: async_nats::Client,
    plugin: String,
    queue_group: Option<String>,
    buffer: usize,
    slot: Arc<ArcSwap<Route>>,
    signals: Arc<StopSignals>,
    /// The buffer's sender, held weakly: the drain task ends once every
    /// reader has ended.
    tx: mpsc::WeakSender<async_nats::Message>,
    /// Each subject's reader, stopped on its own when the subject goes.
    readers: HashMap<String, CancellationToken>,
}

impl CoreTrigger {
    /// Subscribe to the subjects of `subjects` not subscribed yet. Call
    /// [`CoreTrigger::retain`] after switching the route, to let the
    /// subjects no longer wanted go.
    pub async fn add(
        &mut self,
        subjects: &[String],
        subscriptions: &TaskTracker,
    ) -> Result<(), SubscribeError> {
        let stopping = || SubscribeError {
            subject: subjects.join(", "),
            message: "the plugin's subscriptions are stopping".into(),
        };
        if self.signals.stop.is_cancelled() {
            // Every reader is stopping, not ended: subscribing again would
            // deliver an event to the old and the new subscription.
            return Err(stopping());
        }
        let tx = self.tx.upgrade().ok_or_else(stopping)?;
        // A reader whose stream the client ended is gone: subscribe again.
        self.readers.retain(|_, stop| !stop.is_cancelled());
        let added: Vec<String> = subjects
            .iter()
            .filter(|s| !self.readers.contains_key(*s))
            .cloned()
            .collect();
        let subscribed = self.subscribe(&added, &tx, subscriptions).await;
        if subscribed.is_err() {
            // The version is refused: its new subscriptions go again.
            self.retain(
                &self
                    .readers
                    .keys()
                    .filter(|s| !added.contains(s))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
        subscribed
    }

    /// Stop reading the subjects not in `subjects`; what they had received
    /// is still handled.
    pub fn retain(&mut self, subjects: &[String]) {
        self.readers.retain(|subject, stop| {
            let keep = subjects.contains(subject);
            if !keep {
                tracing::info!(plugin = %self.plugin, subject = %subject, "unsubscribing (core NATS)");
                stop.cancel();
            }
            keep
        });
    }

    /// Subscribe to each of `subjects` and start its reader. On an error the
    /// subscriptions made so far keep their readers (the caller stops them).
    async fn subscribe(
        &mut self,
        subjects: &[String],
        tx: &mpsc::Sender<async_nats::Message>,
        subscriptions: &TaskTracker,
    ) -> Result<(), SubscribeError> {
        let added: Vec<&String> = subjects
            .iter()
            .enumerate()
            .filter(|(i, s)| !self.readers.contains_key(*s) && !subjects[..*i].contains(s))
            .map(|(_, s)| s)
            .collect();
        if added.is_empty() {
            return Ok(());
        }
        let mut result = Ok(());
        for subject in added {
            let subscribed = match &self.queue_group {
                Some(group) => {
                    self.client
                        .queue_subscribe(subject.clone(), group.clone())
                        .await
                }
                None => self.client.subscribe(subject.clone()).await,
            };
            let subscriber = match subscribed {
                Ok(subscriber) => subscriber,
                Err(e) => {
                    result = Err(SubscribeError {
                        subject: subject.clone(),
                        message: e.to_string(),
                    });
                    break;
                }
            };
            tracing::info!(plugin = %self.plugin, subject = %subject, queue_group = ?self.queue_group, "subscribed (core NATS)");
            let stop = self.signals.stop.child_token();
            let reader = Reader {
                ctx: self.ctx.clone(),
                client: self.client.clone(),
                tx: tx.clone(),
                slot: self.slot.clone(),
                own: StopSignals::new(&self.ctx, stop.clone()),
                events: self.signals.clone(),
                buffer: self.buffer,
            };
            self.readers.insert(subject.clone(), stop);
            subscriptions.spawn(reader.run(subject.clone(), subscriber));
        }
        // Once the server has the SUBs, publishers can count on them.
        if let Err(e) = crate::nats::sync::synced(&self.client, SYNC_WAIT).await {
            tracing::warn!(plugin = %self.plugin, "after subscribing: {e}");
        }
        result
    }
}

/// What one subscription's reader needs.
struct Reader {
    ctx: Arc<TriggerContext>,
    client: async_nats::Client,
    tx: mpsc::Sender<async_nats::Message>,
    slot: Arc<ArcSwap<Route>>,
    /// When this subscription stops (its subject removed, or the trigger);
    /// cancelled by the reader itself when the client ended its stream.
    own: StopSignals,
    /// The trigger's: what the events it starts see.
    events: Arc<StopSignals>,
    buffer: usize,
}

impl Reader {
    /// Read one subscription into the buffer until stopped, then close it
    /// and keep what it had already received. `own` stops it; the events
    /// it starts see `events`.
    async fn run(self, subject: String, mut subscriber: async_nats::Subscriber) {
        let mut last_report = Instant::now() - Duration::from_secs(1);
        let mut unreported = 0u64;
        loop {
            let message = tokio::select! {
                _ = self.own.stop.cancelled() => break,
                message = subscriber.next() => match message {
                    Some(message) => message,
                    None => {
                        // The client closed it (the connection was closed for
                        // good). Marked ended, so a later `add` of the subject
                        // does not take it for a live subscription.
                        tracing::warn!(plugin = %self.slot.load().tag.name, subject = %subject, "the core subscription ended without being stopped: events on this subject are no longer received: restart the host");
                        self.own.stop.cancel();
                        return;
                    }
                },
            };
            // Nothing buffered and a slot free: start it here, one hop
            // sooner. (A message the drain already took and waits to start is
            // ahead in the semaphore's queue: a freed slot goes to it.)
            if self.tx.capacity() == self.tx.max_capacity() {
                let route = self.slot.load_full();
                if let Ok(permit) = route.concurrency.clone().try_acquire_owned() {
                    run_event(&self.ctx, route, message, Some(permit), &self.events);
                    continue;
                }
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(message) {
                count_dropped(&self.slot.load());
                unreported += 1;
                if last_report.elapsed() >= Duration::from_secs(1) {
                    tracing::warn!(
                        plugin = %self.slot.load().tag.name, subject = %subject, dropped = unreported,
                        "core NATS buffer of {} events is full (the plugin is slower than its traffic): events dropped; raise max_concurrency or core_buffer, add hosts to a queue group, or use mode = \"jetstream\"",
                        self.buffer
                    );
                    last_report = Instant::now();
                    unreported = 0;
                }
            }
        }
        self.drain_subscription(&subject, subscriber).await;
    }

    /// Close the subscription without dropping what the server already sent.
    /// `unsubscribe` would forget the subscription at once, losing what was
    /// still in the socket; `drain` sends UNSUB and keeps it until the client
    /// has read what had arrived, then ends the stream. Everything read is
    /// ours to handle like the rest of the buffer; the sends wait for the
    /// drain task, which after the deadline dead-letters without waiting.
    async fn drain_subscription(&self, subject: &str, mut subscriber: async_nats::Subscriber) {
        let mut unsubscribed = matches!(
            tokio::time::timeout(UNSUBSCRIBE_WAIT, subscriber.drain()).await,
            Ok(Ok(()))
        );
        let mut cutoff = None;
        loop {
            if !unsubscribed {
                // The client's command queue was full: try again.
                unsubscribed = matches!(subscriber.drain().now_or_never(), Some(Ok(())));
            }
            let message = match leftover(
                &mut subscriber,
                &self.client,
                &self.own,
                &mut cutoff,
                unsubscribed,
            )
            .await
            {
                Leftover::Message(message) => message,
                Leftover::Nothing => continue,
                Leftover::Ended => break,
                Leftover::GaveUp => {
                    tracing::warn!(
                        plugin = %self.slot.load().tag.name, subject = %subject,
                        "a stopped core subscription still delivered {AFTER_DEADLINE_CAP:?} after shutdown_grace ended or NATS went down (its UNSUB could not be sent or confirmed): it is dropped; events the server sends it from now on are not received"
                    );
                    break;
                }
            };
            if let Err(unsent) = self.tx.send(message).await {
                run_event(
                    &self.ctx,
                    self.slot.load_full(),
                    unsent.0,
                    None,
                    &self.events,
                );
            }
        }
    }
}

/// What a draining subscription gave.
enum Leftover {
    Message(async_nats::Message),
    /// Nothing yet, and the UNSUB still to be sent: try it again.
    Nothing,
    /// The stream ended (the UNSUB went through), or nothing came within the
    /// quiet period after the deadline.
    Ended,
    /// Messages kept coming for [`AFTER_DEADLINE_CAP`] after the deadline.
    GaveUp,
}

/// The next message a draining subscription still holds. Until the deadline
/// this waits for the stream's end; after it, or while NATS is down (the
/// client sends the UNSUB only once reconnected), only for what arrives
/// within a short quiet period, and for [`AFTER_DEADLINE_CAP`] at most: a
/// host cut off from NATS, or whose UNSUB never went out, still stops.
async fn leftover(
    subscriber: &mut async_nats::Subscriber,
    client: &async_nats::Client,
    signals: &StopSignals,
    cutoff: &mut Option<Instant>,
    unsubscribed: bool,
) -> Leftover {
    if cutoff.is_none() && !signals.deadline.is_cancelled() {
        tokio::select! {
            message = subscriber.next() => return message.map_or(Leftover::Ended, Leftover::Message),
            _ = tokio::time::sleep(UNSUBSCRIBE_RETRY), if !unsubscribed => return Leftover::Nothing,
            _ = signals.deadline.cancelled() => {}
            _ = disconnected(client) => {}
        }
    }
    let cutoff = *cutoff.get_or_insert_with(|| Instant::now() + AFTER_DEADLINE_CAP);
    let quiet = (Instant::now() + QUIET_AFTER_DEADLINE).min(cutoff);
    match tokio::time::timeout_at(quiet.into(), subscriber.next()).await {
        Ok(Some(message)) => Leftover::Message(message),
        Ok(None) => Leftover::Ended,
        Err(_) if Instant::now() >= cutoff => Leftover::GaveUp,
        Err(_) => Leftover::Ended,
    }
}

/// Resolves once the connection is not up (checked every 50 ms; only while
/// a subscription drains).
async fn disconnected(client: &async_nats::Client) {
    while client.connection_state() == async_nats::connection::State::Connected {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Start buffered events as slots free up. After the deadline, what is
/// still buffered is dead-lettered with class `shutdown`.
async fn drain(
    ctx: Arc<TriggerContext>,
    mut rx: mpsc::Receiver<async_nats::Message>,
    slot: Arc<ArcSwap<Route>>,
    signals: Arc<StopSignals>,
) {
    while let Some(message) = rx.recv().await {
        let route = slot.load_full();
        // A free slot is taken without waiting: no waiter registered on the
        // deadline (a lock, then another to remove it) for every event.
        let permit = match route.concurrency.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::Closed) => None,
            Err(TryAcquireError::NoPermits) => tokio::select! {
                permit = route.concurrency.clone().acquire_owned() => permit.ok(),
                _ = signals.deadline.cancelled() => None,
            },
        };
        run_event(&ctx, route, message, permit, &signals);
    }
}

/// Start one event (first polled here, see [`super::poll_here_first`]),
/// with its slot if it already has one.
fn run_event(
    ctx: &Arc<TriggerContext>,
    route: Arc<Route>,
    message: async_nats::Message,
    permit: Option<OwnedSemaphorePermit>,
    signals: &Arc<StopSignals>,
) {
    let (ctx2, signals, route2) = (ctx.clone(), signals.clone(), route.clone());
    super::run_event(ctx, &route, async move {
        // Boxed when it starts (see the JetStream trigger): the task stays small.
        Box::pin(handle(&ctx2, &route2, &message, permit, &signals)).await;
    });
}

/// One event, top to bottom: key, claim, then attempts until it settles.
async fn handle(
    ctx: &TriggerContext,
    route: &Route,
    message: &async_nats::Message,
    mut permit: Option<OwnedSemaphorePermit>,
    signals: &StopSignals,
) {
    if super::skip_replay_for_another_plugin(route, message.headers.as_ref()) {
        return;
    }
    let lookup = |name: &str| convert::first_header(message.headers.as_ref(), name);
    let Key {
        value: key,
        per_message,
    } = derive_key_for(
        &route.tag.name,
        &KeyInput {
            subject: &message.subject,
            reply: message.reply.as_deref(),
            payload: &message.payload,
            header: &lookup,
            position: None,
            source: route.key_source.as_ref(),
            hash_headers: &route.hash_headers,
        },
    );
    let named = Arc::new(EventFields {
        plugin: route.tag.name.clone(),
        version: route.tag.version.clone(),
        subject: message.subject.clone(),
        key,
        position: None,
        trace: LazyTraceId::of(message.headers.as_ref()),
    });
    let (key, trace) = (&named.key, &named.trace);
    event_scope::within(&named, async {
        // A per-message key has nothing to deduplicate against: no store
        // round trip. The lease covers every attempt: retries are in process.
        let mut ledger = Ledger::new(ctx, route, key, !per_message);
        let lease_for = route.retry.max_elapsed.unwrap_or(Duration::from_secs(300)) + route.limits.timeout * 2;
        let mut history = History::default();
        let mut claimed_once = false;
        let mut last_failure: Option<Failure> = None;
        loop {
            let admission = route.admit();
            let claimed = match admission {
                Admission::Rejected { .. } => None,
                _ if claimed_once => Some(Claimed::Ours(history)),
                _ => {
                    claimed_once = true;
                    // The store may be as unreachable as NATS at the host's
                    // last moment: the event is then settled as lost, counted.
                    let replay = replay_count_for(&route.tag.name, message.headers.as_ref());
                    Some(tokio::select! {
                        biased;
                        claimed = ledger.claim(lease_for, replay, history) => claimed,
                        _ = ctx.hard_stop.cancelled() => Claimed::StoreUnavailable,
                    })
                }
            };
            let gate = Gate {
                mode: Mode::Core,
                admission,
                claimed,
                stopping: signals.stopping(),
                when_open: route.when_open,
                clock: GateClock::Live,
            };
            let mut decision = settle::before_attempt(&gate);
            if !matches!(decision, Decision::Run { .. }) && admission == Admission::Probe {
                route.cancel_probe();
            }
            if let Decision::Run { attempt, history: before } = decision {
                let slot = match permit.take() {
                    Some(p) => Some(p),
                    None => tokio::select! {
                        p = route.concurrency.clone().acquire_owned() => p.ok(),
                        _ = signals.deadline.cancelled() => None,
                    },
                };
                decision = match slot {
                    None => {
                        if admission == Admission::Probe {
                            route.cancel_probe();
                        }
                        settle::at_deadline(Mode::Core, before)
                    }
                    Some(slot) => {
                        let event = convert::core_event(message, key, attempt);
                        let outcome = tokio::select! {
                            // Biased: an attempt that ends in its first poll
                            // never registers a waiter on the deadline.
                            biased;
                            result = Box::pin(ctx.dispatcher.attempt(route, key, &event, admission)) => match result {
                                Ok(()) => Outcome::Succeeded,
                                Err(failure) => {
                                    let outcome = Outcome::Failed { class: failure.class, retry_after: failure.retry_after };
                                    last_failure = Some(failure);
                                    outcome
                                }
                            },
                            _ = signals.deadline.cancelled() => {
                                last_failure = Some(Failure {
                                    class: FailureClass::Shutdown,
                                    message: "its attempt was still running and was abandoned".into(),
                                    retry_after: None,
                                });
                                Outcome::Abandoned
                            }
                        };
                        drop(slot);
                        settle::after_attempt(Mode::Core, before, outcome, &route.retry, GateClock::Live, &mut rand::rng())
                    }
                };
            }
            drop(permit.take());

            match decision {
                Decision::Ack => {
                    ledger.completed().await;
                    return;
                }
                Decision::Skip => {
                    tracing::debug!("duplicate of an event settled or in progress; skipped");
                    return;
                }
                Decision::Retry { after, history: tried } => {
                    history = tried;
                    bump(&route.stats.retries, 1);
                    ctx.metrics.retry_scheduled(&route.tag.name);
                    if let Some(f) = &last_failure {
                        tracing::warn!(error.class = f.class.as_str(), "attempt {} failed: {}; retrying in {after:?}", tried.attempts, f.message);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(after) => continue,
                        _ = signals.deadline.cancelled() => {
                            // The grace is over with a retry pending.
                            let Decision::DeadLetter { class, history } = settle::at_deadline(Mode::Core, history) else { unreachable!() };
                            Box::pin(dead_letter(ctx, route, message, &mut ledger, (key, trace.get()), class, history, last_failure.take())).await;
                            return;
                        }
                    }
                }
                Decision::DeadLetter { class, history } => {
                    // Boxed, as every path that is not an event's usual one:
                    // the event's future stays small (it is copied when made).
                    Box::pin(dead_letter(ctx, route, message, &mut ledger, (key, trace.get()), class, history, last_failure.take())).await;
                    return;
                }
                Decision::Shed => {
                    bump(&route.stats.breaker_rejected, 1);
                    bump(&route.stats.shed, 1);
                    tracing::debug!("circuit breaker open: event shed (when_open = \"shed\")");
                    Box::pin(ledger.released(history)).await;
                    return;
                }
                Decision::Redeliver { .. } | Decision::Run { .. } => {
                    unreachable!("core NATS never redelivers; Run was handled")
                }
            }
        }
    })
    .await;
}

/// Give up on a core event: count it, record it, and publish its dead
/// letter, retrying while the DLQ is down until the host's last moment.
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    ctx: &TriggerContext,
    route: &Route,
    message: &async_nats::Message,
    ledger: &mut Ledger<'_>,
    (key, trace): (&str, &str),
    class: FailureClass,
    history: History,
    last: Option<Failure>,
) {
    let message_text = match (class, &last) {
        (FailureClass::CircuitOpen, _) => "the plugin's circuit breaker is open (its dependency looks down); core NATS cannot hold the event, so it is dead-lettered for replay".to_string(),
        (FailureClass::Shutdown, Some(f)) => format!("the host stopped before the event settled (shutdown_grace is over); last failure: {}", f.message),
        (FailureClass::Shutdown, None) => "the host stopped before the event could run (shutdown_grace is over); core NATS cannot hold it, so it is dead-lettered for replay".to_string(),
        (_, Some(f)) => f.message.clone(),
        (_, None) => class.as_str().to_string(),
    };
    let failure = Failure {
        class,
        message: message_text,
        retry_after: None,
    };
    if class == FailureClass::CircuitOpen {
        bump(&route.stats.breaker_rejected, 1);
    }
    route.stats.record_give_up(&failure);
    // Not past the host's last moment: then the letter below is lost, counted.
    tokio::select! {
        _ = ledger.gave_up(history, class, &failure.message) => {}
        _ = ctx.hard_stop.cancelled() => {}
    }
    let now = SystemTime::now();
    let letter = dead_letter_for(
        route,
        message,
        None,
        key,
        history.attempts,
        &failure,
        (history.first_failure.unwrap_or(now), now),
        trace,
    );
    if deliver_dead_letter(&ctx.dispatcher, route, &letter, &ctx.hard_stop).await {
        ledger.dead_lettered(history).await;
    } else {
        ctx.metrics.event_lost(&route.tag.name);
        tracing::error!(
            error.class = class.as_str(),
            "EVENT LOST: gave up after {} attempt(s) ({}) and the DLQ could not take it before the host stopped; core NATS cannot redeliver it",
            history.attempts,
            failure.message
        );
    }
}
