//! CPU isolation between plugins: short events first; long-running work
//! shares a throttled background lane while short events are flowing.
//!
//! Epoch interruption alone bounds *how long* an invocation runs, not *how
//! much of the machine* it takes meanwhile. A plugin spinning until its
//! deadline with a few dozen events in flight would hold every tokio worker in
//! 10 ms slices, and a healthy neighbour's 100 µs events would queue behind
//! them. So the epoch callback of each invocation asks the governor what to do
//! at every tick (a feedback queue with two levels):
//!
//! - **foreground**: an invocation of an *interactive* plugin (one whose
//!   attempts usually finish within one tick) runs at full speed, yielding to
//!   tokio at each tick, until it has run for one tick. Almost every healthy
//!   event finishes there.
//! - **background**: an invocation past its first tick, and every invocation
//!   of a plugin whose attempts usually run longer (such an invocation waits
//!   for a lane before it is even instantiated). A background invocation runs
//!   only while it holds one of the lanes (one per core), one tick at a time,
//!   then requeues (FIFO): however many long invocations are in flight, at
//!   most one per core is runnable, so tokio's run queues stay short enough
//!   for short events (and the NATS client) to be polled promptly. While
//!   interactive work was seen within the last [`BUSY_WINDOW`], a lane given
//!   back first idles in proportion to how long it was held (wasm, host calls,
//!   copying results, teardown alike), so that background work as a whole
//!   gets `background_cpu_share` of one core ([`DEFAULT_BACKGROUND_SHARE`]).
//!
//! This is work-conserving where it matters: plugins that all run long (a
//! host of CPU-heavy but honest plugins) never throttle each other, because
//! only interactive plugins' work counts as "busy", and they use every core.
//! Deadlines are wall-clock, so a throttled runaway plugin still ends with
//! `deadline-exceeded` on time.
//!
//! Each ticket also measures how long *its* invocation was held back (waiting
//! for a lane, idling after one): [`CpuTicket::throttled`]. A deadline
//! missed mostly while throttled is the host's CPU contention, not the
//! plugin's dependency failing, and is reported as such
//! (`InvocationReport::cpu_starved`) so the circuit breaker can leave it out.
//!
//! What it does not do: weigh plugins against each other otherwise (long
//! invocations share the lanes first come, first served), or tell a plugin
//! blocked in a WASI call (no CPU, but it holds its lane) from a busy one.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::UpdateDeadline;

/// The share of one core that background work gets, all lanes together,
/// while interactive work is flowing (host config `background_cpu_share`).
pub const DEFAULT_BACKGROUND_SHARE: f64 = 0.1;

/// How recently interactive work must have been seen for background work to
/// be throttled.
pub const BUSY_WINDOW: Duration = Duration::from_millis(20);

/// Longest a lane idles in one go.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Interactivity score bounds: a plugin is interactive at or above half.
const SCORE_MAX: u32 = 1024;

/// The host-wide scheduler state.
#[derive(Debug)]
pub struct CpuGovernor {
    origin: Instant,
    tick: Duration,
    /// While busy, a lane idles this many times as long as it was held.
    idle_factor: f64,
    foreground: AtomicUsize,
    /// When foreground work was last seen, in nanoseconds since `origin`.
    last_foreground: AtomicU64,
    lanes: Arc<Semaphore>,
    profiles: Mutex<HashMap<Arc<str>, Arc<Profile>>>,
    demoted: AtomicU64,
    throttled_nanos: Arc<AtomicU64>,
}

/// What the governor has seen so far (for tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GovernorStats {
    /// Invocations in the foreground right now.
    pub foreground: usize,
    /// Invocations that ran past their first tick.
    pub demoted: u64,
    /// Time background lanes spent idling for interactive work.
    pub throttled: Duration,
}

/// How a plugin's attempts usually go: an exponentially weighted share of
/// attempts that finished within one tick, in 0..=1024.
#[derive(Debug)]
struct Profile {
    score: AtomicU32,
}

impl Profile {
    fn interactive(&self) -> bool {
        self.score.load(Ordering::Relaxed) >= SCORE_MAX / 2
    }

    fn record(&self, short: bool) {
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s - s / 8 + if short { SCORE_MAX / 8 } else { 0 })
            });
    }
}

/// One plugin's [`Profile`], looked up once (when its route is built) so
/// each invocation does not look it up by name under the governor's lock.
#[derive(Debug, Clone)]
pub struct CpuProfile(Arc<Profile>);

impl CpuGovernor {
    /// A governor for an engine ticking every `tick`, with `lanes` background
    /// lanes (one per core), which together get `busy_share` of one core
    /// while interactive work flows.
    pub fn new(tick: Duration, lanes: usize, busy_share: f64) -> Arc<Self> {
        let lanes = lanes.max(1);
        // Each lane may run for `busy_share / lanes` of the time.
        let idle_factor = lanes as f64 / busy_share.clamp(0.01, 1.0) - 1.0;
        Arc::new(CpuGovernor {
            origin: Instant::now(),
            tick,
            idle_factor,
            foreground: AtomicUsize::new(0),
            last_foreground: AtomicU64::new(0),
            lanes: Arc::new(Semaphore::new(lanes)),
            profiles: Mutex::default(),
            demoted: AtomicU64::new(0),
            throttled_nanos: Arc::default(),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> GovernorStats {
        GovernorStats {
            foreground: self.foreground.load(Ordering::Relaxed),
            demoted: self.demoted.load(Ordering::Relaxed),
            throttled: Duration::from_nanos(self.throttled_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Whether `plugin`'s attempts usually finish within one tick.
    pub fn is_interactive(&self, plugin: &str) -> bool {
        self.profile(plugin).interactive()
    }

    fn profile(&self, plugin: &str) -> Arc<Profile> {
        let mut profiles = self.profiles.lock().expect("governor lock");
        if let Some(p) = profiles.get(plugin) {
            return p.clone();
        }
        let p = Arc::new(Profile {
            score: AtomicU32::new(SCORE_MAX),
        });
        profiles.insert(plugin.into(), p.clone());
        p
    }

    /// `plugin`'s profile, for [`Self::enter_with`]. Profiles are never
    /// removed, so a handle stays the one the governor uses for that name.
    pub fn profile_of(&self, plugin: &str) -> CpuProfile {
        CpuProfile(self.profile(plugin))
    }

    /// Register a new invocation of `plugin` ending at `deadline`: in the
    /// foreground if the plugin is interactive, else in the background (then
    /// [`CpuTicket::admit`] waits for a lane before it may start).
    pub fn enter(self: &Arc<Self>, plugin: &str, deadline: Instant) -> CpuTicket {
        self.enter_at(plugin, Instant::now(), deadline)
    }

    /// [`Self::enter`] for an invocation that started at `now` (a clock
    /// read the caller already made).
    pub fn enter_at(self: &Arc<Self>, plugin: &str, now: Instant, deadline: Instant) -> CpuTicket {
        self.enter_with(&self.profile_of(plugin), now, deadline)
    }

    /// [`Self::enter_at`] with the plugin's profile already at hand.
    pub fn enter_with(
        self: &Arc<Self>,
        profile: &CpuProfile,
        now: Instant,
        deadline: Instant,
    ) -> CpuTicket {
        let profile = profile.0.clone();
        let foreground = profile.interactive();
        if foreground {
            self.foreground.fetch_add(1, Ordering::Relaxed);
            self.touch(now);
        }
        CpuTicket {
            governor: self.clone(),
            profile,
            started: now,
            deadline,
            foreground,
            went_long: false,
            ended: None,
            shared: Arc::default(),
        }
    }

    fn touch(&self, now: Instant) {
        let nanos = now.duration_since(self.origin).as_nanos() as u64;
        self.last_foreground.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Whether interactive work exists now or was seen within [`BUSY_WINDOW`].
    fn foreground_busy(&self, now: Instant) -> bool {
        if self.foreground.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let last = Duration::from_nanos(self.last_foreground.load(Ordering::Relaxed));
        now.duration_since(self.origin).saturating_sub(last) < BUSY_WINDOW
    }

    /// Give a lane back: at once when the host is otherwise idle, else after
    /// idling in proportion to how long it was held (but not past `until`).
    fn release(
        &self,
        held: Held,
        now: Instant,
        until: Option<tokio::time::Instant>,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        if !self.foreground_busy(now) {
            return None;
        }
        let pause = now
            .duration_since(held.since)
            .mul_f64(self.idle_factor)
            .min(MAX_PAUSE);
        let throttled = self.throttled_nanos.clone();
        Some(async move {
            let started = tokio::time::Instant::now();
            let until = until.unwrap_or(started + pause).min(started + pause);
            tokio::time::sleep_until(until).await;
            throttled.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            drop(held);
        })
    }
}

/// A lane held, and since when.
#[derive(Debug)]
struct Held {
    _permit: OwnedSemaphorePermit,
    since: Instant,
}

#[derive(Debug, Default)]
struct Lane {
    held: Option<Held>,
    /// The lane was just acquired: run one tick with it.
    fresh: bool,
}

/// One invocation's place in the scheduler; lives in its epoch callback.
#[derive(Debug)]
pub struct CpuTicket {
    governor: Arc<CpuGovernor>,
    profile: Arc<Profile>,
    started: Instant,
    deadline: Instant,
    foreground: bool,
    went_long: bool,
    /// When the invocation ended, if the caller read the clock already
    /// ([`CpuTicket::end_at`]); else the drop reads it.
    ended: Option<Instant>,
    /// Its lane and throttled time, shared with the futures that wait for
    /// a lane (one allocation for both).
    shared: Arc<Shared>,
}

/// What an invocation shares with the futures that wait for its lane.
#[derive(Debug, Default)]
struct Shared {
    lane: Mutex<Lane>,
    /// Nanoseconds this invocation waited on the governor.
    throttled: AtomicU64,
}

/// Wait for a lane until `deadline`; store it in `lane`, marked fresh.
async fn take_lane(lanes: Arc<Semaphore>, shared: Arc<Shared>, deadline: Instant) -> bool {
    let deadline = tokio::time::Instant::from_std(deadline);
    tokio::select! {
        permit = lanes.acquire_owned() => match permit {
            Ok(permit) => {
                let mut lane = shared.lane.lock().expect("cpu lane lock");
                lane.held = Some(Held { _permit: permit, since: Instant::now() });
                lane.fresh = true;
                true
            }
            Err(_) => false,
        },
        _ = tokio::time::sleep_until(deadline) => false,
    }
}

impl CpuTicket {
    /// Whether this invocation runs in the foreground (its plugin is
    /// interactive and it has not yet run past its first tick).
    pub fn in_foreground(&self) -> bool {
        self.foreground
    }

    /// Before instantiating: a background invocation waits for a lane, so
    /// that its whole attempt (instantiation, the call, copying its results,
    /// teardown) counts against the background share. `false` when the
    /// deadline passed first.
    pub async fn admit(&self) -> bool {
        if self.admitted_at_once() {
            return true;
        }
        let started = Instant::now();
        let admitted = take_lane(
            self.governor.lanes.clone(),
            self.shared.clone(),
            self.deadline,
        )
        .await;
        add_nanos(&self.shared.throttled, started.elapsed());
        admitted
    }

    /// Whether [`CpuTicket::admit`] would admit without waiting (a
    /// foreground invocation). Callers test this first and box `admit`'s
    /// future only for the wait: the future is large, and a caller that
    /// held it inline would carry its size through every event.
    pub fn admitted_at_once(&self) -> bool {
        self.foreground
    }

    /// The invocation ended at `now` (a clock read the caller made): the
    /// ticket's end (when it is dropped) uses it instead of reading again.
    pub fn end_at(&mut self, now: Instant) {
        self.ended = Some(now);
    }

    /// How long this invocation has waited on the governor so far (for a
    /// lane, or idling after one while interactive work flowed).
    pub fn throttled(&self) -> Duration {
        Duration::from_nanos(self.shared.throttled.load(Ordering::Relaxed))
    }

    /// The epoch callback: interrupt at the deadline, otherwise decide
    /// whether to keep running, yield, or wait for a background lane.
    pub fn on_tick(&mut self) -> UpdateDeadline {
        let now = Instant::now();
        if now >= self.deadline {
            return UpdateDeadline::Interrupt;
        }
        if !self.went_long && now.duration_since(self.started) >= self.governor.tick {
            // Learn at once, not when the attempt ends: a runaway plugin's
            // attempts end only at their deadline.
            self.went_long = true;
            self.profile.record(false);
        }
        if self.foreground {
            if !self.went_long {
                self.governor.touch(now);
                return UpdateDeadline::Yield(1);
            }
            self.leave_foreground(now);
            self.governor.demoted.fetch_add(1, Ordering::Relaxed);
        }
        let mut lane = self.shared.lane.lock().expect("cpu lane lock");
        if lane.fresh {
            lane.fresh = false;
            return UpdateDeadline::Continue(1);
        }
        let held = lane.held.take();
        drop(lane);
        if self.profile.interactive() {
            // An occasional long event of a plugin whose events are usually
            // short is not queued behind the background: it runs on.
            if let Some(release) = held.and_then(|h| self.governor.release(h, now, None)) {
                tokio::spawn(release);
            }
            return UpdateDeadline::Yield(1);
        }
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let release = held.and_then(|h| self.governor.release(h, now, Some(deadline)));
        let lanes = self.governor.lanes.clone();
        let shared = self.shared.clone();
        let until = self.deadline;
        let turn: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            let _waiting = Waiting::since(shared.clone());
            if let Some(release) = release {
                release.await;
            }
            // Requeue behind the other background invocations.
            tokio::task::yield_now().await;
            take_lane(lanes, shared, until).await;
        });
        // Zero ticks: the callback runs again as soon as wasm resumes, and
        // either runs a tick with the fresh lane or interrupts at the deadline.
        UpdateDeadline::YieldCustom(0, turn)
    }

    /// This invocation was expensive beyond its CPU time (it grew its memory
    /// by many megabytes: page faults, zeroing, and returning the memory
    /// afterwards cost every thread): count it against the plugin's
    /// interactivity like an attempt that ran long, so a plugin doing that
    /// again and again moves to the background share.
    pub fn mark_heavy(&mut self) {
        if !self.went_long {
            self.went_long = true;
            self.profile.record(false);
        }
    }

    /// A handle to give this invocation's lane back while the call is
    /// suspended outside the governor (blocked in an async host call).
    pub fn lane_handle(&self) -> LaneHandle {
        LaneHandle {
            governor: self.governor.clone(),
            shared: self.shared.clone(),
        }
    }

    fn leave_foreground(&mut self, now: Instant) {
        if self.foreground {
            self.foreground = false;
            self.governor.foreground.fetch_sub(1, Ordering::Relaxed);
            self.governor.touch(now);
        }
    }
}

fn add_nanos(counter: &AtomicU64, d: Duration) {
    counter.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}

/// Adds the time until it is dropped to a ticket's throttled time (a turn
/// may end early: the invocation is interrupted or dropped mid-wait).
struct Waiting {
    since: Instant,
    into: Arc<Shared>,
}

impl Waiting {
    fn since(into: Arc<Shared>) -> Self {
        Waiting {
            since: Instant::now(),
            into,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        add_nanos(&self.into.throttled, self.since.elapsed());
    }
}

/// Gives an invocation's lane back while it waits in a host call; see
/// [`CpuTicket::lane_handle`].
#[derive(Debug, Clone)]
pub struct LaneHandle {
    governor: Arc<CpuGovernor>,
    shared: Arc<Shared>,
}

impl LaneHandle {
    /// Call when the invocation's future returned `Pending`. During the
    /// governor's own turns the lane is not held, so this only releases a
    /// lane held by a plugin blocked in a host call (a WASI sleep, say); it
    /// takes a lane again at its next tick.
    pub fn suspended(&self) {
        let held = {
            let mut lane = self.shared.lane.lock().expect("cpu lane lock");
            if lane.fresh {
                return;
            }
            lane.held.take()
        };
        if let Some(release) = held.and_then(|h| self.governor.release(h, Instant::now(), None)) {
            tokio::spawn(release);
        }
    }
}

impl Drop for CpuTicket {
    fn drop(&mut self) {
        let now = self.ended.unwrap_or_else(Instant::now);
        self.leave_foreground(now);
        if !self.went_long {
            // A long attempt was recorded when it went long; this one ended
            // within its first tick, unless it was blocked in a host call.
            self.profile
                .record(now.duration_since(self.started) < self.governor.tick);
        }
        let held = self.shared.lane.lock().expect("cpu lane lock").held.take();
        if let Some(release) = held.and_then(|h| self.governor.release(h, now, None))
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_yield(u: &UpdateDeadline) -> bool {
        matches!(u, UpdateDeadline::Yield(1))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn heavy_attempts_count_like_long_ones() {
        let governor = CpuGovernor::new(Duration::from_millis(10), 2, 0.1);
        for _ in 0..8 {
            let mut ticket = governor.enter("grower", soon());
            assert!(ticket.admit().await);
            ticket.mark_heavy();
        }
        assert!(
            !governor.is_interactive("grower"),
            "short but heavy attempts move the plugin to the background"
        );
        for _ in 0..8 {
            let ticket = governor.enter("light", soon());
            drop(ticket);
        }
        assert!(governor.is_interactive("light"));
    }

    #[tokio::test]
    async fn the_end_the_caller_read_decides_whether_an_attempt_ran_long() {
        let tick = Duration::from_millis(10);
        let governor = CpuGovernor::new(tick, 1, 0.2);
        let profile = governor.profile_of("p");
        let started = Instant::now();
        // Dropped at once, but ended (by the caller's clock) many ticks in:
        // long attempts, so the plugin leaves the foreground.
        for _ in 0..8 {
            let mut ticket = governor.enter_with(&profile, started, soon());
            ticket.end_at(started + tick * 20);
        }
        assert!(
            !governor.is_interactive("p"),
            "the recorded end, not the drop, is when the attempt ended"
        );
        // Ended within the first tick, even if dropped later: short again.
        for _ in 0..8 {
            let started = Instant::now();
            let mut ticket = governor.enter_with(&profile, started, soon());
            ticket.end_at(started);
            std::thread::sleep(tick + Duration::from_millis(2));
            drop(ticket);
        }
        assert!(governor.is_interactive("p"));
    }

    /// Teach the governor that `plugin`'s attempts run long.
    fn make_slow(governor: &CpuGovernor, plugin: &str) {
        for _ in 0..8 {
            governor.profile(plugin).record(false);
        }
        assert!(!governor.is_interactive(plugin));
    }

    /// Run the callback's wait and report how long it took.
    async fn wait(update: UpdateDeadline) -> Duration {
        let started = Instant::now();
        match update {
            UpdateDeadline::YieldCustom(0, turn) => turn.await,
            _ => panic!("expected to wait for a lane"),
        }
        started.elapsed()
    }

    #[tokio::test]
    async fn an_interactive_invocation_runs_its_slice_then_is_demoted_but_runs_on() {
        let governor = CpuGovernor::new(Duration::from_millis(5), 1, 0.2);
        let mut ticket = governor.enter("p", soon());
        assert!(ticket.in_foreground());
        assert!(ticket.admit().await, "foreground needs no lane");
        assert_eq!(governor.stats().foreground, 1);
        assert!(is_yield(&ticket.on_tick()), "first slice: plain yield");
        std::thread::sleep(Duration::from_millis(6));
        assert!(is_yield(&ticket.on_tick()), "still interactive: no lane");
        assert_eq!(governor.stats().foreground, 0);
        assert_eq!(governor.stats().demoted, 1);
        assert_eq!(governor.lanes.available_permits(), 1);
        drop(ticket);
        assert_eq!(governor.stats().foreground, 0, "no double count on drop");
    }

    #[tokio::test]
    async fn a_plugin_that_keeps_running_long_starts_in_the_background() {
        let governor = CpuGovernor::new(Duration::from_millis(1), 1, 0.2);
        for _ in 0..8 {
            let mut ticket = governor.enter("slow", soon());
            std::thread::sleep(Duration::from_millis(2));
            let _ = ticket.on_tick();
        }
        assert!(!governor.is_interactive("slow"));
        let ticket = governor.enter("slow", soon());
        assert!(!ticket.in_foreground(), "starts in the background");
        assert!(governor.is_interactive("quick"), "others are unaffected");
        drop(ticket);
        // Short attempts win it back.
        for _ in 0..8 {
            drop(governor.enter("slow", soon()));
        }
        assert!(governor.is_interactive("slow"));
    }

    #[tokio::test]
    async fn lanes_bound_how_many_background_invocations_run_at_once() {
        let governor = CpuGovernor::new(Duration::from_millis(1), 2, 0.2);
        make_slow(&governor, "slow");
        let tickets: Vec<CpuTicket> = (0..3).map(|_| governor.enter("slow", soon())).collect();
        assert!(tickets[0].admit().await && tickets[1].admit().await);
        assert_eq!(governor.lanes.available_permits(), 0, "two lanes taken");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), tickets[2].admit())
                .await
                .is_err(),
            "the third waits while both lanes are held"
        );
        // Nothing interactive around: a lane given back is free at once.
        std::thread::sleep(BUSY_WINDOW);
        drop(tickets);
        assert_eq!(governor.lanes.available_permits(), 2);
    }

    #[tokio::test]
    async fn background_rotates_without_idling_when_nothing_interactive_is_around() {
        let governor = CpuGovernor::new(Duration::from_millis(2), 1, 0.2);
        make_slow(&governor, "p");
        let mut ticket = governor.enter("p", soon());
        assert!(ticket.admit().await);
        assert!(matches!(ticket.on_tick(), UpdateDeadline::Continue(1)));
        std::thread::sleep(BUSY_WINDOW);
        let took = wait(ticket.on_tick()).await;
        assert!(took < Duration::from_millis(10), "no pause: {took:?}");
        assert!(matches!(ticket.on_tick(), UpdateDeadline::Continue(1)));
        assert_eq!(governor.stats().throttled, Duration::ZERO);
    }

    #[tokio::test]
    async fn a_lane_idles_in_proportion_while_interactive_work_flows() {
        // One lane, half a core while busy: idle as long as it ran.
        let governor = CpuGovernor::new(Duration::from_millis(2), 1, 0.5);
        make_slow(&governor, "long");
        let mut long = governor.enter("long", soon());
        assert!(long.admit().await);
        assert!(matches!(long.on_tick(), UpdateDeadline::Continue(1)));
        let _busy = governor.enter("short", soon());
        std::thread::sleep(Duration::from_millis(10));
        let idled = wait(long.on_tick()).await;
        assert!(idled >= Duration::from_millis(10), "paused {idled:?}");
        assert!(governor.stats().throttled >= Duration::from_millis(10));
        assert!(
            long.throttled() >= Duration::from_millis(10),
            "the pause is this invocation's throttled time: {:?}",
            long.throttled()
        );
        assert_eq!(
            _busy.throttled(),
            Duration::ZERO,
            "not the interactive one's"
        );
    }

    #[tokio::test]
    async fn a_plugin_blocked_in_a_host_call_gives_its_lane_back() {
        let governor = CpuGovernor::new(Duration::from_millis(2), 1, 0.2);
        make_slow(&governor, "sleepy");
        let ticket = governor.enter("sleepy", soon());
        assert!(ticket.admit().await);
        let handle = ticket.lane_handle();
        handle.suspended();
        assert_eq!(governor.lanes.available_permits(), 0, "fresh: not yet run");
        let mut ticket = ticket;
        assert!(matches!(ticket.on_tick(), UpdateDeadline::Continue(1)));
        std::thread::sleep(BUSY_WINDOW);
        handle.suspended();
        tokio::task::yield_now().await;
        assert_eq!(governor.lanes.available_permits(), 1, "released");
    }

    #[tokio::test]
    async fn the_deadline_ends_waiting_for_a_lane() {
        let governor = CpuGovernor::new(Duration::from_millis(1), 1, 0.2);
        make_slow(&governor, "p");
        let _holder = governor.lanes.clone().acquire_owned().await.unwrap();
        let mut ticket = governor.enter("p", Instant::now() + Duration::from_millis(3));
        assert!(!ticket.admit().await, "admission gives up at the deadline");
        assert!(
            ticket.throttled() >= Duration::from_millis(3),
            "all its time was spent waiting for a lane: {:?}",
            ticket.throttled()
        );
        assert!(matches!(ticket.on_tick(), UpdateDeadline::Interrupt));
    }
}
