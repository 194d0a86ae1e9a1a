//! How much a plugin may log: a per-event line cap, and a per-plugin rate
//! limit shared by all of its events.
//!
//! The per-event cap alone does not protect the host: a plugin handling a
//! thousand events a second, each logging up to its cap, still writes a
//! million lines a second. So every line (a `logging.log` record or a stdout
//! or stderr line) must also take a token from the plugin's [`LogBudget`], a
//! token bucket refilled at `max_log_rate` lines per second. Lines past either
//! limit are dropped and counted, never queued: the plugin keeps running and
//! the host's log stays bounded. Logging never fails an event (the contract
//! promises that), so these are the only limits that drop instead of fail.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::host::PluginTag;

/// How often, at most, a plugin's rate-limit drops are reported in the host log.
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// The log-line token bucket of one plugin, shared by all its invocations.
#[derive(Debug)]
pub struct LogBudget {
    rate: u32,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    unreported: u64,
    reported: Option<Instant>,
}

impl LogBudget {
    /// A bucket of `rate` lines per second, holding at most one second's worth.
    pub fn new(rate: u32) -> Self {
        LogBudget {
            rate,
            state: Mutex::new(Bucket {
                tokens: f64::from(rate),
                refilled: Instant::now(),
                unreported: 0,
                reported: None,
            }),
        }
    }

    /// A budget that never runs out (for `sluice invoke` and smoke tests).
    pub fn unlimited() -> Self {
        Self::new(u32::MAX)
    }

    /// Take one token; `false` (and the drop counted) when the bucket is empty.
    pub fn take(&self, tag: &PluginTag) -> bool {
        if self.rate == u32::MAX {
            return true;
        }
        let mut bucket = self.state.lock().expect("log budget lock");
        let now = Instant::now();
        let rate = f64::from(self.rate);
        let refill = now.duration_since(bucket.refilled).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return true;
        }
        bucket.unreported += 1;
        let due = bucket
            .reported
            .is_none_or(|at| now.duration_since(at) >= DROP_REPORT_INTERVAL);
        if due {
            tracing::warn!(
                plugin = %tag.name, version = %tag.version,
                "plugin logs more than {} lines per second; dropped {} lines (max_log_rate)",
                self.rate, bucket.unreported
            );
            bucket.unreported = 0;
            bucket.reported = Some(now);
        }
        false
    }
}

/// Whether one line may be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Log it.
    Admit,
    /// Dropped: the event reached its line cap (`first` on the first drop).
    EventCapReached {
        /// Whether this is the first line dropped for this event.
        first: bool,
    },
    /// Dropped: the plugin's rate limit is exhausted.
    RateLimited,
}

/// The log gate of one invocation: its own line cap plus the plugin budget.
/// Log records and stdout/stderr lines both pass through it.
#[derive(Debug)]
pub struct LogGate {
    tag: PluginTag,
    budget: std::sync::Arc<LogBudget>,
    max_lines: u32,
    emitted: AtomicU32,
    dropped: AtomicU32,
}

impl LogGate {
    /// A gate for one event of `tag`, allowing `max_lines` lines.
    pub fn new(tag: PluginTag, budget: std::sync::Arc<LogBudget>, max_lines: u32) -> Self {
        LogGate {
            tag,
            budget,
            max_lines,
            emitted: AtomicU32::new(0),
            dropped: AtomicU32::new(0),
        }
    }

    /// Decide about one line.
    pub fn admit(&self) -> Admission {
        if self.emitted.load(Ordering::Relaxed) >= self.max_lines {
            let before = self.dropped.fetch_add(1, Ordering::Relaxed);
            return Admission::EventCapReached { first: before == 0 };
        }
        if !self.budget.take(&self.tag) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Admission::RateLimited;
        }
        self.emitted.fetch_add(1, Ordering::Relaxed);
        Admission::Admit
    }

    /// Whether to log one line of `what` (a log record, a stdout line, ...);
    /// warns once per event when the event's cap is reached.
    pub fn admit_line(&self, what: &str) -> bool {
        match self.admit() {
            Admission::Admit => true,
            Admission::EventCapReached { first: true } => {
                tracing::warn!(
                    plugin = %self.tag.name, version = %self.tag.version,
                    "plugin reached its limit of {} log lines for this event; dropping the rest of its {what} (max_log_lines)",
                    self.max_lines
                );
                false
            }
            Admission::EventCapReached { first: false } | Admission::RateLimited => false,
        }
    }

    /// Start a new event (a reused instance): the line cap and the drop
    /// count start afresh; the plugin's rate budget does not.
    pub fn reset(&self) {
        self.emitted.store(0, Ordering::Relaxed);
        self.dropped.store(0, Ordering::Relaxed);
    }

    /// Count `n` lines dropped by another limit (the output byte cap).
    pub fn count_dropped(&self, n: u32) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// The per-event line cap.
    pub fn max_lines(&self) -> u32 {
        self.max_lines
    }

    /// Lines dropped so far in this invocation (cap and rate limit).
    pub fn dropped(&self) -> u32 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn tag() -> PluginTag {
        PluginTag {
            name: "p".into(),
            version: "v".into(),
        }
    }

    #[test]
    fn the_event_cap_drops_and_counts_past_the_limit() {
        let gate = LogGate::new(tag(), Arc::new(LogBudget::unlimited()), 2);
        assert_eq!(gate.admit(), Admission::Admit);
        assert_eq!(gate.admit(), Admission::Admit);
        assert_eq!(gate.admit(), Admission::EventCapReached { first: true });
        assert_eq!(gate.admit(), Admission::EventCapReached { first: false });
        assert_eq!(gate.dropped(), 2);
    }

    #[test]
    fn the_plugin_budget_is_shared_by_its_events_and_refills() {
        let budget = Arc::new(LogBudget::new(100));
        let a = LogGate::new(tag(), budget.clone(), 1000);
        let b = LogGate::new(tag(), budget.clone(), 1000);
        let admitted = (0..150)
            .filter(|i| {
                let gate = if i % 2 == 0 { &a } else { &b };
                gate.admit() == Admission::Admit
            })
            .count();
        // One second's worth up front, plus whatever refilled meanwhile.
        assert!((100..110).contains(&admitted), "{admitted}");
        assert!(a.dropped() + b.dropped() >= 40);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(a.admit(), Admission::Admit, "tokens refill over time");
    }
}
