//! A circuit breaker per plugin: when a plugin's downstream is down, every
//! event fails, retries pile up and the DLQ fills with events that would have
//! succeeded a minute later. The breaker notices (N consecutive failures, or a
//! failure rate over a sliding window with a minimum volume), opens for a
//! cool-down during which the plugin gets no events (JetStream events wait in
//! the stream), then lets a few probe events through (half-open): success
//! closes it, failure reopens it with a longer cool-down, up to a cap.
//!
//! Only retryable failures and timeouts count: a permanent error is about the
//! event, not the dependency. The state machine is pure (time is passed in),
//! so it is tested without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Breaker settings (host defaults, manifest overrides).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Whether the breaker is active at all.
    pub enabled: bool,
    /// Open after this many counted failures in a row (0 = off).
    pub consecutive_failures: u32,
    /// Open when the failure ratio in the window reaches this (0.0..=1.0; 0 = off).
    pub failure_rate: f64,
    /// The sliding window for the failure rate.
    pub window: Duration,
    /// Fewest outcomes in the window before the rate is considered.
    pub min_volume: u32,
    /// First cool-down while open.
    pub cool_down: Duration,
    /// Longest cool-down (each reopen doubles it up to this).
    pub max_cool_down: Duration,
    /// Probe events let through while half-open.
    pub probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            enabled: true,
            consecutive_failures: 10,
            failure_rate: 0.5,
            window: Duration::from_secs(30),
            min_volume: 20,
            cool_down: Duration::from_secs(5),
            max_cool_down: Duration::from_secs(120),
            probes: 1,
        }
    }
}

/// Per-plugin overrides of the breaker policy (`[breaker]` in a manifest or the host config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerOverrides {
    /// `enabled`.
    pub enabled: Option<bool>,
    /// `consecutive_failures`.
    pub consecutive_failures: Option<u32>,
    /// `failure_rate`.
    pub failure_rate: Option<f64>,
    /// `window`.
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// `min_volume`.
    pub min_volume: Option<u32>,
    /// `cool_down`.
    #[serde(default, with = "humantime_serde")]
    pub cool_down: Option<Duration>,
    /// `max_cool_down`.
    #[serde(default, with = "humantime_serde")]
    pub max_cool_down: Option<Duration>,
    /// `probes`.
    pub probes: Option<u32>,
    /// What a core NATS event meets while open: `dead-letter` (default) or `shed`.
    pub when_open: Option<WhenOpen>,
}

/// What happens to a core NATS event while the breaker is open (core NATS
/// cannot hold events anywhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenOpen {
    /// Publish it to the DLQ with error class `circuit-open` (replayable).
    #[default]
    DeadLetter,
    /// Drop it and count it.
    Shed,
}

impl BreakerOverrides {
    /// Apply these overrides to `policy`.
    pub fn apply(&self, mut policy: BreakerPolicy) -> BreakerPolicy {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { policy.$field = v; } )* };
        }
        set!(
            enabled,
            consecutive_failures,
            failure_rate,
            window,
            min_volume,
            cool_down,
            max_cool_down,
            probes
        );
        policy
    }

    /// Check values; `Err((key, message))` names the bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.failure_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err(("breaker.failure_rate", "must be between 0.0 and 1.0".into()));
        }
        if self.probes == Some(0) {
            return Err(("breaker.probes", "must be at least 1".into()));
        }
        if self.cool_down.is_some_and(|d| d.is_zero()) {
            return Err((
                "breaker.cool_down",
                "must be greater than zero, e.g. \"5s\"".into(),
            ));
        }
        Ok(())
    }
}

/// The breaker's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Events flow.
    Closed,
    /// No events until the cool-down ends.
    Open,
    /// A few probe events flow.
    HalfOpen,
}

impl State {
    /// Stable name for logs, metrics and status.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }
}

/// An operator's override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// Follow the policy.
    Auto,
    /// Always open.
    Open,
    /// Always closed.
    Closed,
}

/// How an attempt ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handled.
    Success,
    /// A retryable failure or a timeout: the dependency may be down.
    Failure,
    /// Anything else (a permanent error, a trap): not about the dependency.
    Neutral,
}

/// Whether an event may run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Run it.
    Allowed,
    /// Run it as a half-open probe.
    Probe,
    /// Do not run it; the breaker reopens (or half-opens) at about this time.
    Rejected {
        /// When the cool-down ends.
        until: Instant,
    },
}

/// A state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// From.
    pub from: State,
    /// To.
    pub to: State,
}

/// The breaker of one plugin.
#[derive(Debug)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    state: State,
    forced: Forced,
    consecutive: u32,
    window: Window,
    open_until: Instant,
    cool_down: Duration,
    probes_out: u32,
}

/// Buckets the sliding window is cut into: outcomes leave it a bucket at a
/// time, so the window is exact to 1/`WINDOW_BUCKETS` of its length.
const WINDOW_BUCKETS: u32 = 20;

/// Outcomes in the sliding window, as per-bucket counts with running
/// totals: recording is O(1) and memory is bounded whatever the event rate
/// (a list of outcomes would hold every event of the window and be counted
/// on every record).
#[derive(Debug, Default)]
struct Window {
    buckets: VecDeque<Bucket>,
    total: u64,
    failed: u64,
}

#[derive(Debug)]
struct Bucket {
    start: Instant,
    total: u64,
    failed: u64,
}

impl Window {
    fn add(&mut self, now: Instant, failed: bool, length: Duration) {
        let width = (length / WINDOW_BUCKETS).max(Duration::from_millis(1));
        match self.buckets.back_mut() {
            Some(b) if now.duration_since(b.start) < width => {
                b.total += 1;
                b.failed += u64::from(failed);
            }
            _ => self.buckets.push_back(Bucket {
                start: now,
                total: 1,
                failed: u64::from(failed),
            }),
        }
        self.total += 1;
        self.failed += u64::from(failed);
        while let Some(front) = self.buckets.front()
            && now.duration_since(front.start) > length
        {
            self.total -= front.total;
            self.failed -= front.failed;
            self.buckets.pop_front();
        }
    }

    fn clear(&mut self) {
        *self = Window::default();
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy, now: Instant) -> Self {
        CircuitBreaker {
            cool_down: policy.cool_down,
            policy,
            state: State::Closed,
            forced: Forced::Auto,
            consecutive: 0,
            window: Window::default(),
            open_until: now,
            probes_out: 0,
        }
    }

    /// Current state (after an operator override).
    pub fn state(&self) -> State {
        match self.forced {
            Forced::Open => State::Open,
            Forced::Closed => State::Closed,
            Forced::Auto => self.state,
        }
    }

    /// The operator override.
    pub fn forced(&self) -> Forced {
        self.forced
    }

    /// How many events a pull consumer may fetch now, given `free` slots, or
    /// how long to wait before asking again. While open nothing is fetched,
    /// so JetStream events wait in the stream and their delivery count does
    /// not grow; half-open fetches only the probes.
    pub fn fetch_budget(&self, now: Instant, free: usize) -> Result<usize, Duration> {
        match self.forced {
            Forced::Open => return Err(Duration::from_millis(500)),
            Forced::Closed => return Ok(free),
            Forced::Auto => {}
        }
        if !self.policy.enabled {
            return Ok(free);
        }
        let probes = self.policy.probes as usize;
        match self.state {
            State::Closed => Ok(free),
            State::Open if now < self.open_until => Err(self.open_until - now),
            State::Open => Ok(free.min(probes)),
            State::HalfOpen => match probes.saturating_sub(self.probes_out as usize) {
                0 => Err(Duration::from_millis(50)),
                left => Ok(free.min(left)),
            },
        }
    }

    /// Replace the policy (a redeploy with new settings).
    pub fn set_policy(&mut self, policy: BreakerPolicy) {
        self.policy = policy;
    }

    /// Set an operator override.
    pub fn force(&mut self, forced: Forced, now: Instant) -> Option<Transition> {
        let before = self.state();
        self.forced = forced;
        if forced == Forced::Auto {
            // Resume from a clean closed state.
            self.close(now);
        }
        let after = self.state();
        (before != after).then_some(Transition {
            from: before,
            to: after,
        })
    }

    /// Whether [`Self::admit`] would allow any event now without a
    /// transition, whatever the time: closed, forced closed or disabled
    /// (so the caller need not read the clock).
    pub fn admits_all(&self) -> bool {
        match self.forced {
            Forced::Closed => true,
            Forced::Open => false,
            Forced::Auto => !self.policy.enabled || self.state == State::Closed,
        }
    }

    /// May an event run now? Moves open -> half-open when the cool-down ended.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        match self.forced {
            Forced::Open => {
                return (
                    Admission::Rejected {
                        until: now + self.policy.cool_down,
                    },
                    None,
                );
            }
            Forced::Closed => return (Admission::Allowed, None),
            Forced::Auto => {}
        }
        if !self.policy.enabled {
            return (Admission::Allowed, None);
        }
        match self.state {
            State::Closed => (Admission::Allowed, None),
            State::Open if now < self.open_until => (
                Admission::Rejected {
                    until: self.open_until,
                },
                None,
            ),
            State::Open => {
                self.state = State::HalfOpen;
                self.probes_out = 1;
                (
                    Admission::Probe,
                    Some(Transition {
                        from: State::Open,
                        to: State::HalfOpen,
                    }),
                )
            }
            State::HalfOpen if self.probes_out < self.policy.probes => {
                self.probes_out += 1;
                (Admission::Probe, None)
            }
            State::HalfOpen => (
                Admission::Rejected {
                    until: now + Duration::from_millis(100),
                },
                None,
            ),
        }
    }

    /// A probe admitted but never run (its key was settled, busy, or the
    /// host is stopping): its slot goes back, so another event probes.
    pub fn cancel_probe(&mut self) {
        self.probes_out = self.probes_out.saturating_sub(1);
    }

    /// Record how an admitted event ended; `admission` is what
    /// [`admit`](Self::admit) answered for it. A probe whose outcome says
    /// nothing about the dependency (a permanent error, a trap) releases its
    /// slot, so the next event probes instead of the plugin stopping for
    /// good; only probes decide a half-open breaker.
    pub fn record(
        &mut self,
        outcome: Outcome,
        admission: Admission,
        now: Instant,
    ) -> Option<Transition> {
        let probe = admission == Admission::Probe;
        if probe && outcome == Outcome::Neutral {
            self.cancel_probe();
        }
        if self.forced != Forced::Auto || !self.policy.enabled || outcome == Outcome::Neutral {
            return None;
        }
        let failed = outcome == Outcome::Failure;
        match self.state {
            // An event admitted before the breaker opened says nothing now.
            State::HalfOpen if !probe => None,
            State::HalfOpen => {
                let from = State::HalfOpen;
                if failed {
                    self.cool_down = (self.cool_down * 2).min(self.policy.max_cool_down);
                    self.open(now);
                    return Some(Transition {
                        from,
                        to: State::Open,
                    });
                }
                self.cool_down = self.policy.cool_down;
                self.close(now);
                Some(Transition {
                    from,
                    to: State::Closed,
                })
            }
            State::Open => None,
            State::Closed => {
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                self.window.add(now, failed, self.policy.window);
                if self.should_open() {
                    self.open(now);
                    return Some(Transition {
                        from: State::Closed,
                        to: State::Open,
                    });
                }
                None
            }
        }
    }

    fn should_open(&self) -> bool {
        let p = &self.policy;
        if p.consecutive_failures > 0 && self.consecutive >= p.consecutive_failures {
            return true;
        }
        let (volume, failures) = (self.window.total, self.window.failed);
        if p.failure_rate > 0.0 && volume >= u64::from(p.min_volume.max(1)) {
            return failures as f64 / volume as f64 >= p.failure_rate;
        }
        false
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open;
        self.open_until = now + self.cool_down;
        self.probes_out = 0;
    }

    fn close(&mut self, _now: Instant) {
        self.state = State::Closed;
        self.consecutive = 0;
        self.window.clear();
        self.probes_out = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            enabled: true,
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_volume: 10,
            cool_down: Duration::from_secs(1),
            max_cool_down: Duration::from_secs(4),
            probes: 1,
        }
    }

    /// `admits_all` (the clock-free fast path) says yes only where `admit`
    /// would allow without a transition, in every state and override.
    #[test]
    fn admits_all_only_where_admit_allows_without_a_transition() {
        let t0 = Instant::now();
        // What `admits_all` said, checked against what `admit` then did.
        let check = |b: &mut CircuitBreaker, at: Instant| {
            let all = b.admits_all();
            let answer = b.admit(at);
            if all {
                assert_eq!(answer, (Admission::Allowed, None), "{:?}", b.state());
            }
            all
        };
        let mut b = CircuitBreaker::new(policy(), t0);
        assert!(check(&mut b, t0), "closed");
        for _ in 0..3 {
            b.record(Outcome::Failure, Admission::Allowed, t0);
        }
        assert!(!check(&mut b, t0), "open");
        let later = t0 + Duration::from_secs(1);
        assert!(!check(&mut b, later), "open past its cool-down (a probe)");
        assert_eq!(b.state(), State::HalfOpen);
        assert!(!check(&mut b, later), "half-open");
        b.force(Forced::Closed, later);
        assert!(check(&mut b, later), "forced closed");
        b.force(Forced::Open, later);
        assert!(!check(&mut b, later), "forced open");
        let mut off = CircuitBreaker::new(
            BreakerPolicy {
                enabled: false,
                ..policy()
            },
            t0,
        );
        assert!(check(&mut off, t0), "disabled");
    }

    #[test]
    fn consecutive_failures_open_and_a_probe_closes() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(policy(), t0);
        assert_eq!(b.record(Outcome::Failure, Admission::Allowed, t0), None);
        assert_eq!(
            b.record(Outcome::Neutral, Admission::Allowed, t0),
            None,
            "permanent errors do not count"
        );
        assert_eq!(b.record(Outcome::Failure, Admission::Allowed, t0), None);
        assert_eq!(
            b.record(Outcome::Failure, Admission::Allowed, t0),
            Some(Transition {
                from: State::Closed,
                to: State::Open
            })
        );
        assert!(matches!(b.admit(t0).0, Admission::Rejected { .. }));
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            b.admit(later),
            (
                Admission::Probe,
                Some(Transition {
                    from: State::Open,
                    to: State::HalfOpen
                })
            )
        );
        assert!(
            matches!(b.admit(later).0, Admission::Rejected { .. }),
            "one probe at a time"
        );
        assert_eq!(
            b.record(Outcome::Success, Admission::Probe, later),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            })
        );
        assert_eq!(b.admit(later).0, Admission::Allowed);
    }

    #[test]
    fn a_probe_ending_neutral_or_never_run_frees_its_slot() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(policy(), t0);
        for _ in 0..3 {
            b.record(Outcome::Failure, Admission::Allowed, t0);
        }
        let later = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(later).0, Admission::Probe);
        // A permanent error or a trap says nothing about the dependency:
        // the breaker stays half-open and the next event probes.
        assert_eq!(b.record(Outcome::Neutral, Admission::Probe, later), None);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.admit(later).0, Admission::Probe);
        // A probe that never ran (its key was a duplicate) gives its slot back.
        b.cancel_probe();
        assert_eq!(b.admit(later).0, Admission::Probe);
        // An event admitted before the breaker opened does not close it.
        assert_eq!(b.record(Outcome::Success, Admission::Allowed, later), None);
        assert_eq!(b.state(), State::HalfOpen);
        assert!(
            b.record(Outcome::Success, Admission::Probe, later)
                .is_some()
        );
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn failed_probes_reopen_with_a_growing_capped_cool_down() {
        let mut now = Instant::now();
        let mut b = CircuitBreaker::new(policy(), now);
        for _ in 0..3 {
            b.record(Outcome::Failure, Admission::Allowed, now);
        }
        let mut cool_downs = Vec::new();
        for _ in 0..4 {
            let Admission::Rejected { until } = b.admit(now).0 else {
                panic!("open")
            };
            cool_downs.push(until - now);
            now = until;
            assert_eq!(b.admit(now).0, Admission::Probe);
            b.record(Outcome::Failure, Admission::Probe, now);
        }
        let secs: Vec<u64> = cool_downs.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 4]);
    }

    #[test]
    fn failure_rate_needs_minimum_volume() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(
            BreakerPolicy {
                consecutive_failures: 0,
                ..policy()
            },
            t0,
        );
        for _ in 0..9 {
            assert_eq!(
                b.record(Outcome::Failure, Admission::Allowed, t0),
                None,
                "below the minimum volume of 10"
            );
        }
        assert_eq!(
            b.record(Outcome::Failure, Admission::Allowed, t0),
            Some(Transition {
                from: State::Closed,
                to: State::Open
            })
        );

        let mut mixed = CircuitBreaker::new(
            BreakerPolicy {
                consecutive_failures: 0,
                ..policy()
            },
            t0,
        );
        for i in 0..20 {
            let outcome = if i % 3 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert_eq!(
                mixed.record(outcome, Admission::Allowed, t0),
                None,
                "a third of failures stays under 50 %"
            );
        }
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(
            BreakerPolicy {
                consecutive_failures: 0,
                min_volume: 4,
                ..policy()
            },
            t0,
        );
        for _ in 0..3 {
            b.record(Outcome::Failure, Admission::Allowed, t0);
        }
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            b.record(Outcome::Success, Admission::Allowed, later),
            None,
            "the three failures expired"
        );
    }

    #[test]
    fn operators_can_force_either_way() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(policy(), t0);
        assert_eq!(
            b.force(Forced::Open, t0),
            Some(Transition {
                from: State::Closed,
                to: State::Open
            })
        );
        assert!(matches!(
            b.admit(t0 + Duration::from_secs(60)).0,
            Admission::Rejected { .. }
        ));
        for _ in 0..5 {
            b.record(Outcome::Failure, Admission::Allowed, t0);
        }
        assert_eq!(
            b.force(Forced::Closed, t0),
            Some(Transition {
                from: State::Open,
                to: State::Closed
            })
        );
        assert_eq!(b.admit(t0).0, Admission::Allowed);
        assert_eq!(b.force(Forced::Auto, t0), None);
        assert_eq!(b.state(), State::Closed);
    }
}
