//! The JetStream trigger: a plugin's durable pull consumer, at least once.
//!
//! An event is acknowledged only after its handler succeeded and its outbox
//! was confirmed. A retry is a Nak with delay, so it survives a host crash;
//! attempts are counted by the host in the dedup record (shared by every
//! host), never taken from the server's delivery count, so a redelivery that
//! never ran the plugin (key busy, breaker open, store down, host stopping)
//! costs nothing. Once the policy gives up, the record says so before the
//! dead letter is published: if the DLQ is down, the publish alone is retried
//! (in process, then by any host that gets the redelivery), never the
//! handler. The original is terminated only once the DLQ acknowledged.
//!
//! From the moment a message arrives until it is settled, a keepalive
//! renews the key's lease and tells the server the message is in progress,
//! so a long wait for a slot or a long attempt never lets `ack_wait` or the
//! lease lapse into a second copy running at once.
//!
//! Pulls: two batches in flight, each at least twice `max_concurrency` and
//! larger for a plugin that drains them fast ([`super::pull_depth`]), so the
//! next messages are on their way while the previous run; the consumer's
//! `max_ack_pending` bounds what is out. Nothing is pulled while the breaker
//! is open, only the probes while half-open. A pull that fails because the
//! consumer or its stream vanished is noticed: warned, counted, `/readyz`
//! not ready, and the consumer recreated with backoff. A consumer that
//! cannot be set up at all because the cluster does not answer (no leader
//! yet) is bound in the background the same way, never given up on.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;

use super::ack_bursts::AckBursts;
use super::pull_depth::{HeldMessage, Holding, MOST_PER_PULL, PullDepth};
use super::{Ledger, StopSignals, TriggerContext, deliver_dead_letter};
use crate::contract;
use crate::delivery::breaker::Admission;
use crate::delivery::dedup::epoch_ms;
use crate::delivery::key::{KeyInput, StreamPosition, derive_key_for};
use crate::delivery::settle::{self, Decision, Gate, GateClock, History, Mode, Outcome};
use crate::dispatch::{LazyTraceId, Route, bump, dead_letter_for};
use crate::engine::invoke::Failure;
use crate::manifest::Manifest;
use crate::nats::convert;
use crate::nats::jetstream::{
    BoundConsumer, ConsumerSpec, JetStreamSetupError, ResumeAfter, durable_consumer,
};
use crate::telemetry::event_scope::{self, EventFields};

/// How long one pull request waits for messages: bounds how long stopping
/// waits for the last batch to end.
const BATCH_EXPIRES: Duration = Duration::from_secs(1);
/// How long a message handed back while this host's pulls may still be
/// open waits before it is delivered again: longer than a pull lives. An
/// immediate Nak brought it straight back into the open pull, to be handed
/// back again, each time counted as a delivery (an untracked event's
/// attempt count, which can dead-letter it before it ever ran).
const HANDBACK_DELAY: Duration = Duration::from_millis(1_200);
/// Pull requests outstanding at once: one being consumed, one on its way.
const PULLS_IN_FLIGHT: usize = 2;
/// How long a lease outlasts the attempt time limit (outbox commit, acks);
/// it is renewed every third of its length while the attempt runs, so only
/// a crashed host's lease ever expires.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// How long a confirmed ack waits for the server's answer before the
/// completion is recorded instead (as long as a JetStream publish waits).
const ACK_CONFIRM_WAIT: Duration = Duration::from_secs(5);
/// How often the pull loop looks at its consumer: that it still exists (an
/// idle pull on a deleted one just times out), and its ack floor.
const CONSUMER_CHECK: Duration = Duration::from_secs(2);
/// How long the pull loop waits for the periodic look: it runs between
/// pulls, so a slow answer (a loaded cluster, an election) must not hold
/// them up for long.
const CHECK_WAIT: Duration = Duration::from_secs(1);
/// How long it waits for a look after a failed pull: nothing is pulled
/// meanwhile anyway, and a slow cluster must not hide a deleted consumer.
const CHECK_WAIT_AFTER_ERROR: Duration = Duration::from_secs(5);

/// What the trigger needs to (re)create its consumer.
pub struct ConsumerSetup {
    /// The host's JetStream context.
    pub js: async_nats::jetstream::Context,
    /// Plugin name.
    pub plugin: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its concurrency cap.
    pub concurrency: u32,
    /// Its time limit.
    pub timeout: Duration,
    /// Replicas of a stream the host creates.
    pub replicas: usize,
}

impl ConsumerSetup {
    /// Bind the durable consumer, creating it (after `resume` when it is
    /// recreated under the running host) if missing.
    async fn bind(
        &self,
        resume: Option<ResumeAfter>,
    ) -> Result<BoundConsumer, JetStreamSetupError> {
        durable_consumer(
            &self.js,
            &ConsumerSpec {
                plugin: &self.plugin,
                manifest: &self.manifest,
                concurrency: self.concurrency,
                timeout: self.timeout,
                replicas: self.replicas,
                resume,
            },
        )
        .await
    }
}

/// Tells apart the pull loops of one plugin (a reload's old and new one) as
/// owners of its `/readyz` condition: the one leaving clears only its own.
static LOOP_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The `/readyz` condition about `plugin`'s consumer.
fn consumer_condition(plugin: &str) -> String {
    format!("plugin `{plugin}` JetStream consumer")
}

/// Set up the plugin's consumer and start pulling for the route in `slot`
/// until `stop`. An error (stream missing, consumer not updatable, ack_wait
/// too short) leaves nothing running. A cluster that does not answer yet
/// (a host starting while a leader is elected, or on a loaded machine) is
/// not such an error: the consumer is bound in the background, with
/// backoff, and the host is not ready until it is.
pub async fn start(
    ctx: Arc<TriggerContext>,
    setup: ConsumerSetup,
    slot: Arc<ArcSwap<Route>>,
    stop: tokio_util::sync::CancellationToken,
    subscriptions: &tokio_util::task::TaskTracker,
) -> Result<(), JetStreamSetupError> {
    let bound = match setup.bind(None).await {
        Ok(bound) => Some(bound),
        Err(e) if e.is_transient() => None,
        Err(e) => return Err(e),
    };
    let signals = StopSignals::new(&ctx, stop);
    let owner = LOOP_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    subscriptions.spawn(async move {
        let bound = match bound {
            Some(bound) => bound,
            None => match bind_when_answered(&ctx, &setup, &signals.stop, owner).await {
                Some(bound) => bound,
                None => return,
            },
        };
        tracing::info!(
            plugin = %setup.plugin, stream = %bound.stream,
            durable = ?setup.manifest.durable_name(&setup.plugin), "consuming (JetStream)"
        );
        consume(ctx, setup, bound, slot, signals, owner).await;
    });
    Ok(())
}

/// Bind the consumer once the cluster answers: tried again with backoff
/// (100 ms doubling to 5 s) while the failure is transient, with a warning
/// and `/readyz` not ready meanwhile. `None` when stopped first, or when
/// the cluster answers with a refusal (logged and shown in `/readyz`: the
/// manifest or the server must change). The condition is raised as
/// `owner`, and nothing is raised once stopped.
async fn bind_when_answered(
    ctx: &TriggerContext,
    setup: &ConsumerSetup,
    stop: &tokio_util::sync::CancellationToken,
    owner: u64,
) -> Option<BoundConsumer> {
    let condition = consumer_condition(&setup.plugin);
    let mut backoff = Duration::from_millis(100);
    loop {
        let bound = setup.bind(None).await;
        if stop.is_cancelled() {
            ctx.health.clear_by(&condition, owner);
            return None;
        }
        match bound {
            Ok(bound) => {
                ctx.health.clear_by(&condition, owner);
                return Some(bound);
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(plugin = %setup.plugin, "{e}; trying again in {backoff:?}");
                ctx.health.set_by(&condition, &e.to_string(), owner);
            }
            Err(e) => {
                tracing::error!(plugin = %setup.plugin, "{e}; the plugin does not consume until this is fixed");
                ctx.health.set_by(&condition, &e.to_string(), owner);
                stop.cancelled().await;
                ctx.health.clear_by(&condition, owner);
                return None;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {
                ctx.health.clear_by(&condition, owner);
                return None;
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The pull loop.
async fn consume(
    ctx: Arc<TriggerContext>,
    setup: ConsumerSetup,
    mut bound: BoundConsumer,
    slot: Arc<ArcSwap<Route>>,
    signals: StopSignals,
    owner: u64,
) {
    let stop = signals.stop.clone();
    let capacity = slot.load().pull_batch_floor().max(MOST_PER_PULL) * PULLS_IN_FLIGHT;
    let mut depth = PullDepth::new(Instant::now());
    let holding = Arc::new(Holding::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Arrived>(capacity);
    let mut pulls = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    let mut pause_until: Option<tokio::time::Instant> = None;
    let mut last_check = tokio::time::Instant::now();
    let mut watch = Watch {
        condition: consumer_condition(&setup.plugin),
        owner,
        floor: None,
        stale: false,
    };
    let acks = AckBursts::start(
        ctx.dispatcher.client().clone(),
        ACK_CONFIRM_WAIT,
        &ctx.tasks,
    );
    let received = Received {
        ctx: &ctx,
        slot: &slot,
        signals: &signals,
        acks: &acks,
    };
    loop {
        if pause_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
            pause_until = None;
        }
        // No pulls on a stale binding (its stream identity may be wrong for
        // the messages a pull would bring): look again, with backoff, until
        // bound.
        if watch.stale && pause_until.is_none() && !stop.is_cancelled() {
            received.start(&mut rx, None, &bound, true).await;
            watch
                .look(
                    &ctx,
                    &setup,
                    &mut bound,
                    &stop,
                    CHECK_WAIT_AFTER_ERROR,
                    "the consumer is gone",
                )
                .await;
            if watch.stale {
                pause_until = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            } else {
                backoff = Duration::from_millis(100);
            }
        }
        let mut waiting_for_room = false;
        while !stop.is_cancelled()
            && !watch.stale
            && pause_until.is_none()
            && pulls.len() < PULLS_IN_FLIGHT
        {
            let route = slot.load_full();
            let wanted = depth.size(route.pull_batch_floor(), Instant::now());
            match route.fetch_budget(wanted).and_then(|n| match n {
                0 => Err(Duration::ZERO),
                n => Ok(n),
            }) {
                // Half-open: the probes' pull is already out.
                Ok(n) if !pulls.is_empty() && n < wanted => break,
                // This host already holds its share: the rest stays in the
                // stream (for another host, or until slots free up here).
                Ok(n) if !holding.room_for(n, wanted * PULLS_IN_FLIGHT) => {
                    waiting_for_room = true;
                    break;
                }
                Ok(n) => {
                    holding.asking(n);
                    pulls.spawn(pull_batch(
                        bound.consumer.clone(),
                        n,
                        tx.clone(),
                        holding.clone(),
                    ));
                }
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
            Some(message) = rx.recv() => received.start(&mut rx, Some(message), &bound, watch.stale).await,
            Some(done) = pulls.join_next(), if !pulls.is_empty() => match done {
                Ok(Ok(pulled)) => {
                    depth.pulled(pulled.messages, pulled.bytes, Instant::now());
                    backoff = Duration::from_millis(100);
                    // An idle pull may mean the consumer is gone (a pull on a
                    // deleted consumer just times out): look now and then.
                    // A busy one notes its ack floor as often, to resume
                    // there should it vanish. (Not once stopping: a reload's
                    // new loop owns the consumer's condition and gauge.)
                    if !stop.is_cancelled() && last_check.elapsed() >= CONSUMER_CHECK {
                        last_check = tokio::time::Instant::now();
                        received.start(&mut rx, None, &bound, watch.stale).await;
                        watch.look(&ctx, &setup, &mut bound, &stop, CHECK_WAIT, "the consumer is gone").await;
                        if watch.stale {
                            pause_until = Some(tokio::time::Instant::now() + backoff);
                        }
                    }
                }
                Ok(Err(e)) => {
                    pause_until = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    // Did the consumer or its stream vanish? Then bind again
                    // (recreating them where the manifest allows).
                    last_check = tokio::time::Instant::now();
                    received.start(&mut rx, None, &bound, watch.stale).await;
                    if stop.is_cancelled()
                        || watch.look(&ctx, &setup, &mut bound, &stop, CHECK_WAIT_AFTER_ERROR, &e).await != Check::Gone
                    {
                        tracing::warn!(plugin = %setup.plugin, "JetStream pull request failed: {e}; retrying in {backoff:?}");
                    }
                }
                Err(e) => tracing::error!(plugin = %setup.plugin, "JetStream pull task failed: {e}"),
            },
            () = holding.freed(), if waiting_for_room => {}
            _ = stop.cancelled(), if !stop.is_cancelled() => {}
            _ = tokio::time::sleep_until(pause_until.unwrap_or_else(tokio::time::Instant::now)), if pause_until.is_some() => {}
        }
    }
    // (Only if raised by this loop: a reload's new one may have since.)
    watch.clear(&ctx);
    // Every pull has ended: whatever they delivered and was not started goes
    // back (events waiting for a slot hand themselves back on `stop`).
    drop(tx);
    while let Some((message, _held)) = rx.recv().await {
        ack(&message, AckKind::Nak(None)).await;
    }
}

/// A message a pull brought, held (counted against the host's room for
/// more) from the moment it arrived until its event settles.
type Arrived = (Message, HeldMessage);

/// What the pull loop needs to start the messages its pulls delivered.
struct Received<'a> {
    ctx: &'a Arc<TriggerContext>,
    slot: &'a Arc<ArcSwap<Route>>,
    signals: &'a StopSignals,
    acks: &'a AckBursts,
}

impl Received<'_> {
    /// Start `first` and everything else already received, in one turn of
    /// the loop (before anything that may wait, such as a look at the
    /// consumer: a message not started gets no in-progress acks). Once
    /// stopping, each is handed back instead, and so is each while the
    /// binding is `stale` (a pull already out may have read a stream made
    /// again, whose identity the binding does not know yet).
    async fn start(
        &self,
        rx: &mut tokio::sync::mpsc::Receiver<Arrived>,
        first: Option<Arrived>,
        bound: &BoundConsumer,
        stale: bool,
    ) {
        let mut next = first.or_else(|| rx.try_recv().ok());
        while let Some((message, held)) = next {
            if self.signals.stop.is_cancelled() {
                // Removed, resubscribed or shutting down: hand it back.
                ack(&message, AckKind::Nak(Some(HANDBACK_DELAY))).await;
                self.ctx.metrics.shutdown_requeued();
            } else if stale {
                ack(&message, AckKind::Nak(Some(HANDBACK_DELAY))).await;
            } else {
                // Its task waits for a slot (in arrival order: the
                // semaphore is fair), kept alive meanwhile.
                spawn_event(
                    self.ctx,
                    self.slot,
                    (message, held),
                    bound,
                    self.signals,
                    self.acks,
                );
            }
            next = rx.try_recv().ok();
        }
    }
}

/// What a look at the consumer found.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    /// It exists.
    There {
        /// Every message up to this stream sequence is acknowledged.
        ack_floor: u64,
        /// When it was created (ns since the Unix epoch): another time than the bound consumer's
        /// means it was deleted and made again (by another host on the
        /// same durable, or an operator) between two looks.
        created_ns: i128,
    },
    /// It, or its stream, is gone.
    Gone,
    /// No answer (NATS down, a leader election): nothing to conclude.
    Unknown,
}

/// What the pull loop knows of its consumer beyond the binding.
struct Watch {
    /// The host's `/readyz` condition about it, and this loop's id as its
    /// owner.
    condition: String,
    owner: u64,
    /// The last ack floor seen, to resume after should it vanish.
    floor: Option<ResumeAfter>,
    /// The last bind again failed: the binding may describe a stream and a
    /// consumer that are gone, whatever now has the durable's name. No
    /// pulls are made on it.
    stale: bool,
}

impl Watch {
    /// Mark the host not ready: `why`.
    fn raise(&self, ctx: &TriggerContext, why: &str) {
        ctx.health.set_by(&self.condition, why, self.owner);
    }

    /// Clear the condition, if this loop raised it last.
    fn clear(&self, ctx: &TriggerContext) {
        ctx.health.clear_by(&self.condition, self.owner);
    }

    /// Look at the consumer and act on what is found: bind again when it is
    /// gone; when it is there but not the one bound (made again between two
    /// looks) or the binding is stale, bind to it, which refreshes what the
    /// loop knows of the stream and reconciles the consumer's settings, and
    /// only then clear the host's condition; otherwise note its ack floor.
    /// Nothing is done once `stop` is cancelled (a reload's new loop owns
    /// the condition and the gauge by then).
    async fn look(
        &mut self,
        ctx: &TriggerContext,
        setup: &ConsumerSetup,
        bound: &mut BoundConsumer,
        stop: &tokio_util::sync::CancellationToken,
        wait: Duration,
        why: &str,
    ) -> Check {
        let found = check(bound, wait).await;
        if stop.is_cancelled() {
            return Check::Unknown;
        }
        match &found {
            Check::Gone => {
                let first = !self.stale;
                self.rebind(ctx, setup, bound, stop, why, first).await;
            }
            Check::There { created_ns, .. }
                if self.stale
                    || *created_ns
                        != bound.consumer.cached_info().created.unix_timestamp_nanos() =>
            {
                if !self.stale {
                    ctx.metrics.consumer_lost(&setup.plugin);
                    tracing::warn!(plugin = %setup.plugin, "JetStream durable consumer was deleted and created again by someone else (another host on the durable, or an operator); binding to the new one");
                }
                let refused = "cannot bind to the consumer found there yet";
                if self.bind_again(ctx, setup, bound, stop, refused).await {
                    tracing::info!(plugin = %setup.plugin, stream = %bound.stream, "bound to the durable consumer found there");
                }
            }
            Check::There { ack_floor, .. } => {
                self.floor = Some(ResumeAfter {
                    stream_created_ms: bound.stream_created_ms,
                    stream_sequence: *ack_floor,
                });
                ctx.metrics.ack_floor(&setup.plugin, *ack_floor);
            }
            Check::Unknown => {}
        }
        found
    }

    /// The consumer (or its stream) vanished: say so and count it (the
    /// `first` time, not on each retry), mark the host not ready, and bind
    /// again (recreating what the manifest allows); the condition clears
    /// once bound, and the binding is stale until then.
    async fn rebind(
        &mut self,
        ctx: &TriggerContext,
        setup: &ConsumerSetup,
        bound: &mut BoundConsumer,
        stop: &tokio_util::sync::CancellationToken,
        why: &str,
        first: bool,
    ) {
        if first {
            ctx.metrics.consumer_lost(&setup.plugin);
            tracing::warn!(plugin = %setup.plugin, "JetStream durable consumer is gone ({why}); recreating it");
            self.raise(ctx, &format!("consumer or stream missing: {why}"));
        }
        let refused = "cannot recreate the consumer yet";
        if self.bind_again(ctx, setup, bound, stop, refused).await {
            match self
                .floor
                .filter(|f| f.stream_created_ms == bound.stream_created_ms)
            {
                Some(f) => tracing::info!(
                    plugin = %setup.plugin, stream = %bound.stream,
                        "durable consumer bound again; made by this host, it starts after stream sequence {} (the last ack floor seen; a message settled since then runs again), while one another host or an operator made first keeps its own start",
                    f.stream_sequence
                ),
                None => {
                    tracing::info!(plugin = %setup.plugin, stream = %bound.stream, "durable consumer recreated")
                }
            }
        }
    }

    /// Bind again (a consumer made is started after the last ack floor)
    /// and take the outcome: bound, the binding is fresh and the condition
    /// clears; refused, it stays stale and the host not ready, logged as
    /// `refused`. Whether bound; nothing changes when stopped meanwhile.
    async fn bind_again(
        &mut self,
        ctx: &TriggerContext,
        setup: &ConsumerSetup,
        bound: &mut BoundConsumer,
        stop: &tokio_util::sync::CancellationToken,
        refused: &str,
    ) -> bool {
        let bound_again = setup.bind(self.floor).await;
        if stop.is_cancelled() {
            return false;
        }
        match bound_again {
            Ok(rebound) => {
                *bound = rebound;
                self.stale = false;
                self.clear(ctx);
                true
            }
            Err(e) => {
                tracing::warn!(plugin = %setup.plugin, "{refused} (retrying): {e}");
                self.raise(ctx, &e.to_string());
                self.stale = true;
                false
            }
        }
    }
}

/// Look at the consumer, waiting at most `wait` for the answer.
async fn check(bound: &BoundConsumer, wait: Duration) -> Check {
    use async_nats::jetstream::context::ConsumerInfoErrorKind as Kind;
    let Ok(answer) = tokio::time::timeout(wait, bound.consumer.get_info()).await else {
        return Check::Unknown;
    };
    match answer {
        Ok(info) => Check::There {
            ack_floor: info.ack_floor.stream_sequence,
            created_ns: info.created.unix_timestamp_nanos(),
        },
        Err(e) if matches!(e.kind(), Kind::NotFound | Kind::StreamNotFound) => Check::Gone,
        Err(_) => Check::Unknown,
    }
}

/// What one pull brought.
struct Pulled {
    messages: usize,
    /// Payload bytes.
    bytes: usize,
}

/// One pull request, its batch read to the end into `to`; what it
/// brought. An error item (consumer deleted, stream gone, leadership
/// change) fails the pull.
async fn pull_batch(
    consumer: PullConsumer,
    max: usize,
    to: tokio::sync::mpsc::Sender<Arrived>,
    holding: Arc<Holding>,
) -> Result<Pulled, String> {
    let mut pulled = Pulled {
        messages: 0,
        bytes: 0,
    };
    let read = read_batch(consumer, max, to, &holding, &mut pulled).await;
    holding.pull_ended(max, pulled.messages);
    read.map(|()| pulled)
}

/// [`pull_batch`]'s request and reading; each message it brings is told to
/// `holding`.
async fn read_batch(
    consumer: PullConsumer,
    max: usize,
    to: tokio::sync::mpsc::Sender<Arrived>,
    holding: &Arc<Holding>,
    received: &mut Pulled,
) -> Result<(), String> {
    let mut messages = consumer
        .batch()
        .max_messages(max)
        .expires(BATCH_EXPIRES)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let mut failed = None;
    while let Some(next) = messages.next().await {
        match next {
            Ok(message) => {
                received.messages += 1;
                received.bytes += message.payload.len();
                // Held before no longer asked for: always counted once.
                let held = holding.hold();
                holding.brought_one();
                if let Err(unsent) = to.send((message, held)).await {
                    ack(&unsent.0.0, AckKind::Nak(None)).await;
                }
            }
            Err(e) => failed = Some(e.to_string()),
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Start one event: it waits for a slot of the plugin's current version,
/// then handles the event; from arrival until it settles, the message is
/// kept alive (in-progress acks), so a long wait for a slot or an instance
/// never lets `ack_wait` lapse into a second copy running at once. One
/// future per event does both (no separate keepalive task); it is first
/// polled here and gets a task only if it has to wait
/// ([`super::poll_here_first`]).
fn spawn_event(
    ctx: &Arc<TriggerContext>,
    slot: &Arc<ArcSwap<Route>>,
    (message, held): (Message, HeldMessage),
    bound: &BoundConsumer,
    signals: &StopSignals,
    acks: &AckBursts,
) {
    let route = slot.load_full();
    let (ctx2, slot, signals) = (ctx.clone(), slot.clone(), signals.clone());
    let from_consumer = FromConsumer {
        stream_created_ms: bound.stream_created_ms,
        acks: acks.clone(),
    };
    let ack_wait = bound.ack_wait;
    ctx.tasks.spawn(async move {
        let every = (ack_wait / 3).max(Duration::from_millis(200));
        kept_alive(&message, every, async {
            let Some((route, permit)) = wait_for_slot(&slot, route, &signals).await else {
                // Removed, resubscribed or shutting down before it started.
                ack(&message, AckKind::Nak(Some(HANDBACK_DELAY))).await;
                ctx2.metrics.shutdown_requeued();
                return;
            };
            let _in_flight = super::started(&route);
            let lease_for = route.limits.timeout + LEASE_MARGIN;
            // Boxed here, when it starts: the handling future is kilobytes,
            // and the task would otherwise carry it (and tokio copy it)
            // from the moment the message arrives.
            Box::pin(handle(
                &ctx2,
                &route,
                &message,
                permit,
                lease_for,
                &signals,
                &from_consumer,
            ))
            .await;
        })
        .await;
        // Settled (or handed back): room for another message.
        drop(held);
    });
}

/// What an event's handling needs from its consumer.
struct FromConsumer {
    /// When the stream was created (part of a position key).
    stream_created_ms: u64,
    /// Sends the acks of successes, confirming those of first deliveries.
    acks: AckBursts,
}

/// A slot of the version in `slot` (a free one at once, else the first one
/// freed, in arrival order), and that version; `None` when stopping first.
async fn wait_for_slot(
    slot: &ArcSwap<Route>,
    mut route: Arc<Route>,
    signals: &StopSignals,
) -> Option<(Arc<Route>, OwnedSemaphorePermit)> {
    loop {
        if signals.stop.is_cancelled() {
            return None;
        }
        let permit = match route.concurrency.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                permit = route.concurrency.clone().acquire_owned() => permit.ok()?,
                _ = signals.stop.cancelled() => return None,
            },
        };
        // A reload swapped the version while it waited: the new one runs it.
        let current = slot.load_full();
        if Arc::ptr_eq(&current, &route) {
            return Some((route, permit));
        }
        route = current;
    }
}

/// Run `work`, telling the server every `every` that `message` is in
/// progress until it ends.
async fn kept_alive<F: std::future::Future<Output = ()>>(
    message: &Message,
    every: Duration,
    work: F,
) {
    tokio::pin!(work);
    let tick = tokio::time::sleep(every);
    tokio::pin!(tick);
    loop {
        tokio::select! {
            biased;
            () = &mut work => return,
            () = &mut tick => {
                tick.as_mut().reset(tokio::time::Instant::now() + every);
                if let Err(e) = Box::pin(message.ack_with(AckKind::Progress)).await {
                    tracing::debug!("in-progress ack not sent: {e}");
                }
            }
        }
    }
}

/// One event, top to bottom.
async fn handle(
    ctx: &TriggerContext,
    route: &Route,
    message: &Message,
    permit: OwnedSemaphorePermit,
    lease_for: Duration,
    signals: &StopSignals,
    from_consumer: &FromConsumer,
) {
    let &FromConsumer {
        stream_created_ms,
        ref acks,
    } = from_consumer;
    let info = match message.info() {
        Ok(info) => info,
        Err(e) => {
            tracing::error!(plugin = %route.tag.name, "not a JetStream message ({e}); terminating it");
            ack(message, AckKind::Term).await;
            return;
        }
    };
    if super::skip_replay_for_another_plugin(route, message.headers.as_ref()) {
        ack(message, AckKind::Ack).await;
        return;
    }
    let (stream, sequence, delivered) = (
        info.stream.to_string(),
        info.stream_sequence,
        info.delivered,
    );
    let published = SystemTime::UNIX_EPOCH
        + Duration::from_nanos(u64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0));
    let lookup = |name: &str| convert::first_header(message.headers.as_ref(), name);
    let key = derive_key_for(
        &route.tag.name,
        &KeyInput {
            subject: &message.subject,
            reply: None,
            payload: &message.payload,
            header: &lookup,
            position: Some(StreamPosition {
                stream: &stream,
                created_ms: stream_created_ms,
                sequence,
            }),
            source: route.key_source.as_ref(),
            hash_headers: &route.hash_headers,
        },
    )
    .value;
    let named = Arc::new(EventFields {
        plugin: route.tag.name.clone(),
        version: route.tag.version.clone(),
        subject: message.subject.clone(),
        key,
        position: Some((stream.clone(), sequence)),
        trace: LazyTraceId::of(message.headers.as_ref()),
    });
    let (key, trace) = (&named.key, &named.trace);
    event_scope::within(&named, async {
        // Without a dedup record, the server's count is all there is.
        let untracked = History {
            attempts: u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX),
            first_failure: (delivered > 1).then_some(published),
        };
        let replay = crate::delivery::dead_letter::replay_count_for(&route.tag.name, message.headers.as_ref());
        let mut ledger = Ledger::new(ctx, route, key, true);
        let admission = route.admit();
        // The first delivery of a message keyed by its own position cannot be
        // held by anyone else: its claim's round trip is skipped.
        let own_position = StreamPosition {
            stream: &stream,
            created_ms: stream_created_ms,
            sequence,
        };
        let first_delivery = delivered == 1 && own_position.is_key(key);
        let claimed = match admission {
            Admission::Rejected { .. } => None,
            _ if first_delivery && ledger.may_skip_claim() => Some(ledger.assume_unclaimed(replay)),
            // The lease starts now, when the attempt is about to start.
            _ => Some(ledger.claim(lease_for, replay, untracked).await),
        };
        let decision = settle::before_attempt(&Gate {
            mode: Mode::JetStream,
            admission,
            claimed,
            stopping: signals.stopping(),
            when_open: route.when_open,
            clock: GateClock::Live,
        });
        if !matches!(decision, Decision::Run { .. }) && admission == Admission::Probe {
            route.cancel_probe();
        }

        let mut last_failure: Option<Failure> = None;
        let decision = match decision {
            Decision::Run { attempt, history } => {
                let event = contract::Event {
                    subject: message.subject.as_str().to_owned(),
                    payload: message.payload.to_vec(),
                    headers: convert::headers_to_vec(message.headers.as_ref()),
                    idempotency_key: key.clone(),
                    attempt,
                    delivery: contract::Delivery {
                        stream: Some(stream.clone()),
                        sequence: Some(sequence),
                        published_at_ms: Some(epoch_ms(published)),
                        reply_to: None,
                    },
                };
                let outcome = {
                    let mut attempt_run = Box::pin(ctx.dispatcher.attempt(route, key, &event, admission));
                    let renew_every = lease_for / 3;
                    // No timer for an event without a lease (dedup off, or
                    // a first delivery whose claim was skipped).
                    let renewing = ledger.holds_lease();
                    loop {
                        tokio::select! {
                            result = &mut attempt_run => break match result {
                                Ok(()) => Outcome::Succeeded,
                                Err(failure) => {
                                    let outcome = Outcome::Failed { class: failure.class, retry_after: failure.retry_after };
                                    last_failure = Some(failure);
                                    outcome
                                }
                            },
                            _ = signals.deadline.cancelled() => {
                                tracing::warn!("shutdown deadline reached while handling; handed back (Nak) for redelivery");
                                ctx.metrics.shutdown_requeued();
                                break Outcome::Abandoned;
                            }
                            _ = tokio::time::sleep(renew_every), if renewing => ledger.renew(lease_for).await,
                        }
                    }
                };
                drop(permit);
                settle::after_attempt(Mode::JetStream, history, outcome, &route.retry, GateClock::Live, &mut rand::rng())
            }
            other => {
                drop(permit);
                other
            }
        };

        match decision {
            Decision::Ack if ledger.is_unclaimed() => {
                // A first delivery keyed by its own stream position: only a
                // redelivery of this very message can meet the key again
                // (replays addressed to another plugin are skipped by name),
                // and a confirmed ack rules that out. The confirmation is
                // the record; one is written only when it does not come.
                if let Err(e) = confirmed_ack(acks, message).await {
                    tracing::debug!("acknowledgement not confirmed ({e}); recording completion so a redelivery is skipped");
                    Box::pin(async { tokio::join!(ledger.completed(), ack(message, AckKind::Ack)) }).await;
                }
            }
            Decision::Ack => {
                // Either order is safe (a redelivery before the record lands
                // runs again, its publishes deduplicated by id): the ack is
                // queued for the next burst and the record written meanwhile.
                let queued = message.reply.clone().is_some_and(|reply| acks.ack(reply));
                if queued {
                    ledger.completed().await;
                } else {
                    Box::pin(async { tokio::join!(ledger.completed(), ack(message, AckKind::Ack)) }).await;
                }
            }
            Decision::Skip => {
                tracing::debug!("already settled; acknowledged without handling");
                ack(message, AckKind::Ack).await;
            }
            Decision::Retry { after, history } => {
                bump(&route.stats.retries, 1);
                ctx.metrics.retry_scheduled(&route.tag.name);
                if let Some(f) = &last_failure {
                    tracing::warn!(error.class = f.class.as_str(), "attempt {} failed: {}; redelivery in {after:?}", history.attempts, f.message);
                }
                Box::pin(ledger.released(history)).await;
                ack(message, AckKind::Nak(Some(after))).await;
            }
            Decision::Redeliver { after, why } => {
                if why == settle::NotAttempted::BreakerOpen {
                    bump(&route.stats.breaker_rejected, 1);
                }
                tracing::debug!("not attempted ({}); redelivering in {after:?}", why.as_str());
                if let Some(record) = ledger.record() {
                    let unchanged = record.history();
                    Box::pin(ledger.released(unchanged)).await;
                }
                // Handed back while stopping: after this host's pulls expired,
                // or it would come straight back into one still open.
                let after = match why {
                    settle::NotAttempted::Stopping | settle::NotAttempted::Abandoned => {
                        after.max(HANDBACK_DELAY)
                    }
                    _ => after,
                };
                ack(message, AckKind::Nak((!after.is_zero()).then_some(after))).await;
            }
            Decision::DeadLetter { class, history } => {
                // The failure: this attempt's, else the one recorded when the
                // policy gave up earlier (only the dead letter was owed).
                let failure = last_failure.unwrap_or_else(|| Failure {
                    class,
                    message: ledger
                        .record()
                        .and_then(|r| r.gave_up.as_ref())
                        .map(|g| g.message.clone())
                        .unwrap_or_else(|| "gave up earlier; the dead letter was owed".into()),
                    retry_after: None,
                });
                if ledger.record().is_none_or(|r| r.gave_up.is_none()) {
                    route.stats.record_give_up(&failure);
                    Box::pin(ledger.gave_up(history, class, &failure.message)).await;
                }
                let now = SystemTime::now();
                let letter = dead_letter_for(
                    route,
                    &message.message,
                    Some((&stream, sequence)),
                    key,
                    history.attempts,
                    &failure,
                    (history.first_failure.unwrap_or(now), now),
                    trace.get(),
                );
                // Tried until the grace is over: an event that gives up
                // while the host stops is dead-lettered then too.
                if Box::pin(deliver_dead_letter(&ctx.dispatcher, route, &letter, &signals.deadline)).await {
                    Box::pin(ledger.dead_lettered(history)).await;
                    ack(message, AckKind::Term).await;
                } else {
                    // Stopping with the DLQ still down: the record says the
                    // dead letter is owed, so the redelivery publishes it
                    // without running the handler.
                    tracing::error!("shutdown_grace ended before the DLQ confirmed the dead letter; the event stays in the stream and its dead letter is published on redelivery");
                    ack(message, AckKind::Nak(Some(settle::UNSETTLED_RETRY))).await;
                }
            }
            Decision::Shed | Decision::Run { .. } => unreachable!("JetStream never sheds; Run was handled"),
        }
    })
    .await;
}

/// Acknowledge `message` and wait for the server to confirm it was applied
/// (one answer per burst of acks, see [`super::ack_bursts`]); no
/// subscription per ack, unlike `Message::double_ack`.
async fn confirmed_ack(acks: &AckBursts, message: &Message) -> Result<(), String> {
    let Some(reply) = message.reply.clone() else {
        return Err("not a JetStream message (no reply subject)".into());
    };
    acks.ack_confirmed(reply).await
}

async fn ack(message: &Message, kind: AckKind) {
    // Boxed: the client's ack future is large, and most events' futures
    // (whose acks go out in bursts) need not carry it.
    if let Err(e) = Box::pin(message.ack_with(kind)).await {
        // The server redelivers after ack_wait; the dedup record makes that safe.
        tracing::warn!(
            "acknowledgement ({kind:?}) not sent: {e}; the server will redeliver after ack_wait"
        );
    }
}
