//! CPU isolation between plugins: short invocations first, long ones share a
//! throttled background lane while anything short is waiting.
//!
//! Epoch interruption alone bounds *how long* an invocation runs, not *how
//! much of the machine* it takes meanwhile. A plugin spinning until its
//! deadline, with a few dozen events in flight, would hold every tokio worker
//! in 10 ms slices, and a healthy neighbour's 100 µs events would queue behind
//! them. So the epoch callback of each invocation asks the governor what to do
//! at every tick (a two-level feedback queue):
//!
//! - **foreground**: an invocation's first slice (one tick, 10 ms by default)
//!   runs at full speed, yielding to tokio at each tick. Almost every healthy
//!   event finishes here.
//! - **background**: past its slice, an invocation is demoted. While the host
//!   is otherwise idle it keeps running freely. While foreground work exists
//!   (seen within the last two ticks), background invocations take turns on a
//!   single baton: the holder runs one tick, then idles `pause` ticks still
//!   holding it, then requeues (FIFO). Long-running work as a whole thus gets
//!   at most `1 / (1 + pause)` of one core while short events are flowing, and
//!   never starves: its deadline is wall-clock, so a throttled runaway plugin
//!   still ends with `deadline-exceeded` on time.
//!
//! What it does not do: weigh plugins against each other beyond that (two
//! long-running plugins share the background lane first come, first served),
//! or throttle time spent in host calls (a plugin blocked in a WASI call uses
//! no CPU; the invocation's backstop timer ends it at the deadline).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::UpdateDeadline;

/// Ticks a background invocation idles after each tick it ran, while
/// foreground work is waiting: background gets a fifth of one core.
pub const DEFAULT_PAUSE_TICKS: u32 = 4;

/// The host-wide scheduler state.
#[derive(Debug)]
pub struct CpuGovernor {
    origin: Instant,
    tick: Duration,
    pause: Duration,
    foreground: AtomicUsize,
    /// When foreground work was last seen, in nanoseconds since `origin`.
    last_foreground: AtomicU64,
    baton: Arc<Semaphore>,
    demoted: AtomicU64,
    throttled_ticks: AtomicU64,
}

/// What the governor has seen so far (for tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GovernorStats {
    /// Invocations in their first slice right now.
    pub foreground: usize,
    /// Invocations ever demoted to the background.
    pub demoted: u64,
    /// Ticks background invocations spent idling for foreground work.
    pub throttled_ticks: u64,
}

impl CpuGovernor {
    /// A governor for an engine ticking every `tick`.
    pub fn new(tick: Duration, pause_ticks: u32) -> Arc<Self> {
        Arc::new(CpuGovernor {
            origin: Instant::now(),
            tick,
            pause: tick * pause_ticks,
            foreground: AtomicUsize::new(0),
            last_foreground: AtomicU64::new(0),
            baton: Arc::new(Semaphore::new(1)),
            demoted: AtomicU64::new(0),
            throttled_ticks: AtomicU64::new(0),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> GovernorStats {
        GovernorStats {
            foreground: self.foreground.load(Ordering::Relaxed),
            demoted: self.demoted.load(Ordering::Relaxed),
            throttled_ticks: self.throttled_ticks.load(Ordering::Relaxed),
        }
    }

    /// Register a new invocation (in the foreground) ending at `deadline`.
    pub fn enter(self: &Arc<Self>, deadline: Instant) -> CpuTicket {
        self.foreground.fetch_add(1, Ordering::Relaxed);
        self.touch(Instant::now());
        CpuTicket {
            governor: self.clone(),
            started: Instant::now(),
            deadline,
            foreground: true,
            lane: Arc::default(),
        }
    }

    fn touch(&self, now: Instant) {
        let nanos = now.duration_since(self.origin).as_nanos() as u64;
        self.last_foreground.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Whether foreground work exists now or was seen within two ticks.
    fn foreground_busy(&self, now: Instant) -> bool {
        if self.foreground.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let last = Duration::from_nanos(self.last_foreground.load(Ordering::Relaxed));
        now.duration_since(self.origin).saturating_sub(last) < self.tick * 2
    }
}

#[derive(Debug, Default)]
struct Lane {
    baton: Option<OwnedSemaphorePermit>,
    /// The baton was just acquired: run one tick with it.
    fresh: bool,
}

/// One invocation's place in the scheduler; lives in its epoch callback.
#[derive(Debug)]
pub struct CpuTicket {
    governor: Arc<CpuGovernor>,
    started: Instant,
    deadline: Instant,
    foreground: bool,
    lane: Arc<Mutex<Lane>>,
}

impl CpuTicket {
    /// The epoch callback: interrupt at the deadline, otherwise decide
    /// whether to keep running, yield, or wait for the background baton.
    pub fn on_tick(&mut self) -> UpdateDeadline {
        let now = Instant::now();
        if now >= self.deadline {
            return UpdateDeadline::Interrupt;
        }
        if self.foreground {
            if now.duration_since(self.started) < self.governor.tick {
                self.governor.touch(now);
                return UpdateDeadline::Yield(1);
            }
            self.leave_foreground(now);
            self.governor.demoted.fetch_add(1, Ordering::Relaxed);
        }
        let governor = &self.governor;
        let busy = governor.foreground_busy(now);
        let mut lane = self.lane.lock().expect("cpu lane lock");
        if lane.fresh {
            lane.fresh = false;
            return UpdateDeadline::Continue(1);
        }
        let held = lane.baton.take();
        drop(lane);
        if !busy && held.is_none() {
            return UpdateDeadline::Yield(1);
        }
        if busy && held.is_some() {
            governor.throttled_ticks.fetch_add(
                (governor.pause.as_nanos() / governor.tick.as_nanos().max(1)) as u64,
                Ordering::Relaxed,
            );
        }
        let pause = governor.pause;
        let baton = governor.baton.clone();
        let lane = self.lane.clone();
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let turn: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            if let Some(permit) = held {
                if busy {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
                drop(permit);
            }
            if !busy {
                tokio::task::yield_now().await;
                return;
            }
            tokio::select! {
                permit = baton.acquire_owned() => {
                    if let Ok(permit) = permit {
                        let mut lane = lane.lock().expect("cpu lane lock");
                        lane.baton = Some(permit);
                        lane.fresh = true;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        });
        // Zero ticks: the callback runs again as soon as wasm resumes, and
        // either runs a tick with the fresh baton or interrupts at the deadline.
        UpdateDeadline::YieldCustom(0, turn)
    }

    fn leave_foreground(&mut self, now: Instant) {
        if self.foreground {
            self.foreground = false;
            self.governor.foreground.fetch_sub(1, Ordering::Relaxed);
            self.governor.touch(now);
        }
    }
}

impl Drop for CpuTicket {
    fn drop(&mut self) {
        self.leave_foreground(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_yield(u: &UpdateDeadline) -> bool {
        matches!(u, UpdateDeadline::Yield(1))
    }

    #[tokio::test]
    async fn a_fresh_invocation_runs_its_slice_then_is_demoted() {
        let governor = CpuGovernor::new(Duration::from_millis(5), 4);
        let mut ticket = governor.enter(Instant::now() + Duration::from_secs(5));
        assert_eq!(governor.stats().foreground, 1);
        assert!(is_yield(&ticket.on_tick()), "first slice: plain yield");
        std::thread::sleep(Duration::from_millis(6));
        // Demoted; the host was busy a moment ago (itself), so it waits for the baton.
        assert!(matches!(
            ticket.on_tick(),
            UpdateDeadline::YieldCustom(0, _)
        ));
        assert_eq!(governor.stats().foreground, 0);
        assert_eq!(governor.stats().demoted, 1);
        drop(ticket);
        assert_eq!(governor.stats().foreground, 0, "no double count on drop");
    }

    #[tokio::test]
    async fn background_runs_freely_when_the_host_is_idle() {
        let governor = CpuGovernor::new(Duration::from_millis(2), 4);
        let mut ticket = governor.enter(Instant::now() + Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(3));
        let _ = ticket.on_tick();
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            is_yield(&ticket.on_tick()),
            "no foreground work for two ticks: run"
        );
    }

    #[tokio::test]
    async fn background_takes_turns_on_the_baton_while_foreground_is_busy() {
        let governor = CpuGovernor::new(Duration::from_millis(2), 1);
        let mut long = governor.enter(Instant::now() + Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(3));
        let _busy = governor.enter(Instant::now() + Duration::from_secs(5));
        // Waits for the baton, gets it, then runs exactly one tick with it.
        let UpdateDeadline::YieldCustom(0, turn) = long.on_tick() else {
            panic!("expected to wait for the baton");
        };
        turn.await;
        assert!(matches!(long.on_tick(), UpdateDeadline::Continue(1)));
        assert_eq!(governor.baton.available_permits(), 0, "baton held");
        // Next tick: idle while holding it, then hand it over and requeue.
        let UpdateDeadline::YieldCustom(0, turn) = long.on_tick() else {
            panic!("expected a pause");
        };
        let started = Instant::now();
        turn.await;
        assert!(started.elapsed() >= Duration::from_millis(2), "paused");
        assert!(governor.stats().throttled_ticks >= 1);
    }

    #[tokio::test]
    async fn the_deadline_interrupts_whatever_the_lane() {
        let governor = CpuGovernor::new(Duration::from_millis(1), 4);
        let mut ticket = governor.enter(Instant::now() + Duration::from_millis(3));
        let _busy = governor.enter(Instant::now() + Duration::from_secs(5));
        let _holder = governor.baton.clone().acquire_owned().await.unwrap();
        std::thread::sleep(Duration::from_millis(2));
        if let UpdateDeadline::YieldCustom(_, turn) = ticket.on_tick() {
            // The baton never frees up; the wait ends at the deadline.
            tokio::time::timeout(Duration::from_secs(1), turn)
                .await
                .expect("waiting ends at the deadline");
        }
        std::thread::sleep(Duration::from_millis(2));
        assert!(matches!(ticket.on_tick(), UpdateDeadline::Interrupt));
    }
}
