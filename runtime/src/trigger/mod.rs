//! Triggers: where events come from. Each mode is one self-contained file
//! that owns its subscription, its buffering, its shutdown hand-back and its
//! settlement calls: [`core`] for core NATS subscriptions, [`jetstream`] for
//! durable pull consumers. An event's path reads top to bottom in its file:
//! key, claim, gate ([`crate::delivery::settle::before_attempt`]), attempt
//! ([`crate::dispatch::Dispatcher::attempt`]), decision
//! ([`crate::delivery::settle::after_attempt`]), then ack, retry or
//! dead-letter.
//!
//! This module holds what both modes need around that path: the
//! [`Ledger`] (dedup records of one event, with logging and counters), the
//! dead-letter delivery loop, and the [`TriggerContext`] shared by every
//! subscription of the host.

pub mod ack_bursts;
pub mod core;
pub mod jetstream;
pub mod pull_depth;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delivery::dead_letter::DeadLetter;
use crate::delivery::dedup::{
    Claim, ClaimRequest, DedupError, DedupStore, Lease, Record, holder_token,
};
use crate::delivery::settle::{Claimed, History, Stopping};
use crate::dispatch::{Dispatcher, Route, bump};
use crate::telemetry::Metrics;
use crate::telemetry::health::Health;

/// What every trigger of the host shares.
pub struct TriggerContext {
    /// Runs attempts.
    pub dispatcher: Arc<Dispatcher>,
    /// Dedup records (`None`: no store configured).
    pub dedup: Option<Arc<dyn DedupStore>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Not-ready conditions.
    pub health: Health,
    /// Every event task (the host waits for them at shutdown).
    pub tasks: TaskTracker,
    /// Cancelled when the host starts shutting down.
    pub shutdown: CancellationToken,
    /// Cancelled when `shutdown_grace` is over.
    pub deadline: CancellationToken,
    /// Cancelled at the host's last moment (after the deadline, once the
    /// settling time is over): dead letters still unconfirmed are lost then.
    pub hard_stop: CancellationToken,
    /// How long stopping subscriptions get to finish their events.
    pub grace: Duration,
}

/// Start one event of `route`, counted as received and in flight (a
/// retired version drains until its last event ends), first polled here
/// (see [`poll_here_first`]).
pub(crate) fn run_event<F>(ctx: &TriggerContext, route: &Arc<Route>, handle: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let in_flight = started(route);
    let event = async move {
        let _in_flight = in_flight;
        handle.await;
    };
    poll_here_first(&ctx.tasks, route.calls_are_short(), &route.tag.name, event);
}

/// Run `event`, an event of `plugin`, to its end, in a task of `tasks` if
/// it needs one.
///
/// While the plugin's invocations are `short` ([`Route::calls_are_short`]),
/// the event is first polled right here, in the task that received it, and
/// moved into a task of its own only if it has to wait (for a slot, an
/// instance, a round trip, a timer). Most events of a fast plugin finish in
/// that first poll: no task to make and schedule, no hand-off to another
/// worker, and the events of a burst run in the order they came (a task
/// spawned last runs first in tokio's LIFO slot). A plugin whose
/// invocations run longer gets a task per event at once; an unusually long
/// event of a fast plugin holds the reader until its first epoch tick
/// (the governor yields there) or its first host call that waits. A panic
/// in the first poll is caught and logged, as a task's panic would be, so
/// it cannot end the reader.
///
/// The core trigger's readers use it (measured: core no-op with reuse
/// +40%, docs/benchmarks.md). The JetStream trigger does not: its one pull
/// loop per consumer would run every event's first poll on one worker,
/// and each of its rows measured slower (the fresh-instance rows by a
/// third).
pub(crate) fn poll_here_first<F>(tasks: &TaskTracker, short: bool, plugin: &str, event: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    if !short {
        tasks.spawn(event);
        return;
    }
    let mut event = Box::pin(event);
    // Whatever the first poll waits on is polled again, with the task's
    // own waker, when the task first runs: a wake-up meanwhile is not lost.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        event.as_mut().poll(&mut cx)
    })) {
        Ok(std::task::Poll::Ready(())) => {}
        Ok(std::task::Poll::Pending) => {
            tasks.spawn(event);
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(plugin = %plugin, "handling an event panicked: {what}; the event is not settled by this host (JetStream redelivers it after ack_wait; a core event is lost): please report this bug");
        }
    }
}

/// Count an event of `route` as received and started, and in flight for as
/// long as the guard lives.
pub(crate) fn started(route: &Arc<Route>) -> crate::dispatch::InFlight {
    bump(&route.stats.received, 1);
    route.plugin_metrics.event_received();
    crate::dispatch::InFlight::new(route.clone())
}

/// A replay that `sluice dlq replay` addressed to another plugin: this
/// plugin already had the original event, so the replay is a duplicate for
/// it and is skipped without running the handler or asking the store
/// (counted as a dedup hit). `true` when skipped.
pub(crate) fn skip_replay_for_another_plugin(
    route: &Route,
    headers: Option<&async_nats::HeaderMap>,
) -> bool {
    let Some(target) = crate::delivery::dead_letter::replay_target(headers) else {
        return false;
    };
    if target == &*route.tag.name {
        return false;
    }
    bump(&route.stats.dedup_hits, 1);
    route.metrics.dedup_hit(&route.tag.name);
    tracing::debug!(plugin = %route.tag.name, replay_for = target, "a replay addressed to another plugin; skipped");
    true
}

/// When a subscription stops (host shutdown, plugin removed or
/// resubscribed) and when its grace is over.
#[derive(Clone)]
pub struct StopSignals {
    /// Stop taking new events.
    pub stop: CancellationToken,
    /// `shutdown_grace` after `stop`: nothing more runs.
    pub deadline: CancellationToken,
}

impl StopSignals {
    /// Signals for one subscription: `stop` (a child of the host's shutdown)
    /// and a deadline that fires `grace` after it, or with the host's.
    pub fn new(ctx: &TriggerContext, stop: CancellationToken) -> StopSignals {
        let deadline = ctx.deadline.child_token();
        let (fire, grace) = (deadline.clone(), ctx.grace);
        let watched = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = watched.cancelled() => {}
                _ = fire.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(grace) => fire.cancel(),
                _ = fire.cancelled() => {}
            }
        });
        StopSignals { stop, deadline }
    }

    /// How far stopping has gone.
    pub fn stopping(&self) -> Stopping {
        if self.deadline.is_cancelled() {
            Stopping::Deadline
        } else if self.stop.is_cancelled() {
            Stopping::Draining
        } else {
            Stopping::No
        }
    }
}

/// The dedup record of one event, as the trigger keeps it: claim, then
/// rewrite it as the event settles. Every store failure is logged with the
/// plugin and key, and never stops the event: the record is advisory for
/// the write that failed, and the next delivery reads what did land.
pub struct Ledger<'a> {
    store: Option<&'a Arc<dyn DedupStore>>,
    route: &'a Route,
    key: &'a str,
    /// Boxed: only a tracked key has one, and every event's future holds
    /// the ledger. Inline, the ~170-byte lease put the core event's boxed
    /// future at 1,088 bytes, past the 1 KiB up to which glibc serves an
    /// allocation from its per-thread cache; every event then paid a
    /// large-size allocation, which first consolidates the fast bins
    /// (docs/benchmarks.md, ninth round).
    lease: Option<Box<Lease>>,
    /// The claim was skipped (a first delivery nobody else can hold): the
    /// record is created when the event settles, with this replay count.
    unclaimed: Option<u32>,
}

impl<'a> Ledger<'a> {
    /// A ledger for `key` of `route`; `tracked` is false when dedup is off
    /// or the key is unique to this message (nothing to deduplicate).
    pub fn new(ctx: &'a TriggerContext, route: &'a Route, key: &'a str, tracked: bool) -> Self {
        Ledger {
            store: ctx.dedup.as_ref().filter(|_| tracked && route.dedup),
            route,
            key,
            lease: None,
            unclaimed: None,
        }
    }

    /// Whether the claim may be skipped: a store keeps the record and is
    /// open (while it is not, events wait for it like any other).
    pub fn may_skip_claim(&self) -> bool {
        self.store.is_some_and(|s| s.is_open())
    }

    /// Skip the claim for a key no other delivery can hold: the first
    /// delivery of a JetStream message keyed by its own stream position (a
    /// second copy exists only once ack_wait lapsed, which the in-progress
    /// acks prevent while this host lives). Its record is created once, when
    /// the event settles: one store round trip per event instead of two.
    pub fn assume_unclaimed(&mut self, replay: u32) -> Claimed {
        if self.store.is_some() {
            bump(&self.route.stats.dedup_misses, 1);
            self.unclaimed = Some(replay);
        }
        Claimed::Ours(History::default())
    }

    /// Whether the claim was skipped and no record written yet: the key is
    /// the first delivery's own stream position (see [`assume_unclaimed`](Self::assume_unclaimed)).
    pub fn is_unclaimed(&self) -> bool {
        self.unclaimed.is_some() && self.lease.is_none()
    }

    /// Whether this event holds a lease that must be renewed while its
    /// attempt runs.
    pub fn holds_lease(&self) -> bool {
        self.lease.is_some()
    }

    /// Whether a store keeps this event's record.
    pub fn tracked(&self) -> bool {
        self.store.is_some()
    }

    /// Claim the key; `untracked` is the history to use without a store.
    pub async fn claim(&mut self, lease: Duration, replay: u32, untracked: History) -> Claimed {
        let Some(store) = self.store else {
            return Claimed::Ours(untracked);
        };
        let holder = holder_token();
        let request = ClaimRequest {
            scope: &self.route.tag.name,
            key: self.key,
            lease,
            holder: &holder,
            replay,
        };
        match store.claim(request).await {
            Ok(claim) => {
                let stats = &self.route.stats;
                match &claim {
                    Claim::Completed | Claim::DeadLettered => {
                        bump(&stats.dedup_hits, 1);
                        self.route.metrics.dedup_hit(&self.route.tag.name);
                    }
                    Claim::Busy { .. } => bump(&stats.lease_conflicts, 1),
                    Claim::Acquired(_) => bump(&stats.dedup_misses, 1),
                }
                let claimed = claim.claimed();
                if let Claim::Acquired(lease) = claim {
                    self.lease = Some(Box::new(lease));
                }
                claimed
            }
            Err(e) => {
                tracing::warn!(plugin = %self.route.tag.name, key = self.key, "cannot claim the idempotency key: {e}");
                Claimed::StoreUnavailable
            }
        }
    }

    /// The record as last written (the failure kept for a dead letter owed).
    pub fn record(&self) -> Option<&Record> {
        self.lease.as_ref().map(|l| &l.record)
    }

    /// Extend the lease by `lease` from now (a long wait or attempt).
    pub async fn renew(&mut self, lease: Duration) {
        let (Some(store), Some(current)) = (self.store, self.lease.as_mut()) else {
            return;
        };
        let record = current.renewed(SystemTime::now(), lease);
        if let Err(e) = store.write(current, record).await {
            tracing::warn!(plugin = %self.route.tag.name, key = self.key, "cannot renew the lease: {e}");
        }
    }

    /// The attempt succeeded: record completion (even over a lease taken
    /// over meanwhile: the handler did succeed).
    pub async fn completed(&mut self) {
        let Some(store) = self.store else { return };
        let written = match self.lease.as_mut() {
            Some(lease) => {
                let record = lease.completed();
                match store.write(lease, record.clone()).await {
                    Ok(()) => Ok(()),
                    Err(_) => store.force(lease, record).await,
                }
            }
            None => match self.create(|l| l.completed()).await {
                Some(result) => result,
                None => return,
            },
        };
        if let Err(e) = written {
            tracing::warn!(
                plugin = %self.route.tag.name, key = self.key,
                "cannot record completion; a redelivery may run the handler again (its publishes are deduplicated downstream): {e}"
            );
        }
    }

    /// Create the record of an unclaimed key (`None`: not unclaimed).
    async fn create(
        &mut self,
        record: impl FnOnce(&Lease) -> Record,
    ) -> Option<Result<(), DedupError>> {
        let (store, replay) = (self.store?, self.unclaimed?);
        let stand_in = Lease::unclaimed(String::new(), replay);
        let record = record(&stand_in);
        Some(
            match store.create(&self.route.tag.name, self.key, record).await {
                Ok(lease) => {
                    self.lease = Some(Box::new(lease));
                    self.unclaimed = None;
                    Ok(())
                }
                Err(e) => Err(e),
            },
        )
    }

    /// The lease ends with `history`: a failed attempt to retry, or nothing
    /// ran (the history is then the one claimed; an unclaimed key then needs
    /// no record at all).
    pub async fn released(&mut self, history: History) {
        if self.lease.is_none() && history.attempts == 0 {
            return;
        }
        self.write(
            |l| l.released(history),
            "release the lease (it expires on its own)",
        )
        .await;
    }

    /// The policy gave up: the dead letter is owed from now on, so a
    /// redelivery publishes it without running the handler again.
    pub async fn gave_up(
        &mut self,
        history: History,
        class: crate::engine::invoke::FailureClass,
        message: &str,
    ) {
        self.write(
            |l| l.given_up(history, class, message, SystemTime::now()),
            "record the give-up (a redelivery may run the handler again)",
        )
        .await;
    }

    /// The dead letter was confirmed.
    pub async fn dead_lettered(&mut self, history: History) {
        self.write(|l| l.dead_lettered(history), "record the dead letter")
            .await;
    }

    async fn write(&mut self, record: impl FnOnce(&Lease) -> Record, what: &str) {
        let Some(store) = self.store else { return };
        let written = match self.lease.as_mut() {
            Some(lease) => {
                let record = record(lease);
                store.write(lease, record).await
            }
            None => match self.create(record).await {
                Some(result) => result,
                None => return,
            },
        };
        if let Err(e) = written {
            tracing::warn!(plugin = %self.route.tag.name, key = self.key, "cannot {what}: {e}");
        }
    }
}

/// First delay between dead-letter publishes while the DLQ is unavailable.
const DLQ_RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest delay between them.
const DLQ_RETRY_MAX: Duration = Duration::from_secs(5);

/// Publish `letter` to the DLQ, retrying with backoff while it is
/// unavailable, until it is confirmed or `until` fires. Only the publish is
/// retried: the handler never runs again for an event given up on.
pub async fn deliver_dead_letter(
    dispatcher: &Dispatcher,
    route: &Route,
    letter: &DeadLetter,
    until: &CancellationToken,
) -> bool {
    let mut backoff = DLQ_RETRY_FIRST;
    loop {
        let published = tokio::select! {
            result = dispatcher.dead_letter(route, letter) => result,
            _ = until.cancelled() => return false,
        };
        match published {
            Ok(()) => return true,
            Err(e) => {
                tracing::error!(
                    plugin = %route.tag.name, key = %letter.key,
                    "{e}; the dead letter is retried in {backoff:?} (the handler does not run again)"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = until.cancelled() => return false,
        }
        backoff = (backoff * 2).min(DLQ_RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use tokio_util::task::TaskTracker;

    use super::poll_here_first;

    #[tokio::test]
    async fn an_event_that_need_not_wait_ends_in_the_first_poll_without_a_task() {
        let tasks = TaskTracker::new();
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        poll_here_first(&tasks, true, "p", async move {
            flag.store(true, Ordering::SeqCst);
        });
        assert!(done.load(Ordering::SeqCst), "ran before returning");
        assert_eq!(tasks.len(), 0, "no task was made");
    }

    #[tokio::test]
    async fn an_event_that_waits_moves_into_a_task_and_a_wake_up_meanwhile_is_not_lost() {
        let tasks = TaskTracker::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        poll_here_first(&tasks, true, "p", async move {
            rx.await.unwrap();
            done_tx.send(()).unwrap();
        });
        assert_eq!(tasks.len(), 1, "it waits in a task of its own");
        // Woken before the task ever ran (the first poll's waker was a no-op).
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), done_rx)
            .await
            .expect("the event ends once woken")
            .unwrap();
    }

    #[tokio::test]
    async fn a_slow_plugins_event_is_not_polled_before_its_task_runs() {
        let tasks = TaskTracker::new();
        let polled = Arc::new(AtomicBool::new(false));
        let flag = polled.clone();
        poll_here_first(&tasks, false, "p", async move {
            flag.store(true, Ordering::SeqCst);
        });
        assert!(!polled.load(Ordering::SeqCst), "not run in the caller");
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .unwrap();
        assert!(polled.load(Ordering::SeqCst), "run in its task");
    }

    #[tokio::test]
    async fn a_panic_in_the_first_poll_is_caught_and_the_caller_goes_on() {
        let tasks = TaskTracker::new();
        poll_here_first(&tasks, true, "p", async {
            panic!("a bug");
        });
        assert_eq!(tasks.len(), 0);
    }
}
