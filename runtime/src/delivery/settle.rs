//! The settlement state machine: what happens to one event, decided in one
//! place for both delivery modes, with no I/O and no clock of its own.
//!
//! A trigger (core or JetStream) gathers the facts (what the dedup store said
//! about the key, whether the breaker admits the event, whether the host is
//! stopping, how the attempt ended) and asks this module for the next step.
//! Keeping the decision pure is what lets the unit and property tests below
//! walk every sequence of outcomes and crash points, which end-to-end tests
//! alone could never reach.
//!
//! The rules it guarantees (checked by the property tests):
//! - an event is acknowledged only after an attempt succeeded, which means its
//!   outbox was confirmed ([`Outcome::Succeeded`]);
//! - it is dead-lettered only after `max_attempts` real attempts, after
//!   `max_elapsed` since its first real failure, or after a permanent failure
//!   (core NATS, which cannot hold an event, adds two classes of its own:
//!   `circuit-open` and `shutdown`);
//! - a delivery that never ran the plugin (key busy elsewhere, breaker open,
//!   host stopping, store unavailable, attempt abandoned at the shutdown
//!   deadline) never consumes an attempt and never starts `max_elapsed`.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::delivery::breaker::{Admission, WhenOpen};
use crate::delivery::retry::RetryPolicy;
use crate::engine::invoke::FailureClass;

/// Redelivery delay when the host cannot decide now (store unavailable).
pub const UNSETTLED_RETRY: Duration = Duration::from_secs(2);
/// Shortest and longest redelivery delay of a non-attempt.
const REDELIVER_MIN: Duration = Duration::from_millis(100);
const REDELIVER_MAX: Duration = Duration::from_secs(30);

/// How the event reached the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Core NATS: at most once from the broker; the host retries in process.
    Core,
    /// A JetStream durable consumer: the server redelivers until acked.
    JetStream,
}

/// Real attempts made on an event so far (counted by the host, in the dedup
/// record when there is one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct History {
    /// Attempts that ran the plugin.
    pub attempts: u32,
    /// When the first of them failed (`max_elapsed` counts from here).
    pub first_failure: Option<SystemTime>,
}

/// What the dedup store answered for the event's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The key is ours to handle (or dedup is off): what was tried before.
    Ours(History),
    /// The policy already gave up on this key; only its dead letter is owed
    /// (the DLQ was unavailable last time).
    GaveUp(History, FailureClass),
    /// Handled successfully before: a duplicate.
    Completed,
    /// Dead-lettered before (the termination was lost): a duplicate.
    DeadLettered,
    /// Another attempt holds the key until then.
    Busy {
        /// When its lease ends.
        until: SystemTime,
    },
    /// The store could not be read or written.
    StoreUnavailable,
}

/// How far the host is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopping {
    /// Serving.
    No,
    /// Stopping (shutdown, plugin removed, resubscribed): no new JetStream
    /// work; core events already received are still handled.
    Draining,
    /// `shutdown_grace` is over: nothing more runs.
    Deadline,
}

/// Why a delivery did not run the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAttempted {
    /// The key is leased by another attempt.
    Busy,
    /// The circuit breaker is open.
    BreakerOpen,
    /// The host or the plugin's subscription is stopping.
    Stopping,
    /// The dedup store is unavailable.
    StoreUnavailable,
    /// The attempt was abandoned at the shutdown deadline.
    Abandoned,
}

impl NotAttempted {
    /// A short reason for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NotAttempted::Busy => "key in progress elsewhere",
            NotAttempted::BreakerOpen => "circuit breaker open",
            NotAttempted::Stopping => "stopping",
            NotAttempted::StoreUnavailable => "dedup store unavailable",
            NotAttempted::Abandoned => "abandoned at the shutdown deadline",
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler succeeded and its outbox was confirmed.
    Succeeded,
    /// The attempt failed.
    Failed {
        /// Its class (drives retry or give-up).
        class: FailureClass,
        /// The plugin's suggested delay.
        retry_after: Option<Duration>,
    },
    /// The shutdown deadline cut it short: the host's doing, not the plugin's.
    Abandoned,
}

/// The next step for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run attempt number `attempt` (1-based) now.
    Run {
        /// The attempt number the plugin sees.
        attempt: u32,
        /// Attempts before this one.
        history: History,
    },
    /// Handled: acknowledge (the outbox is confirmed).
    Ack,
    /// A duplicate of a settled event: acknowledge without running.
    Skip,
    /// An attempt failed: try again after the delay (JetStream: Nak with
    /// delay; core: an in-process timer).
    Retry {
        /// The delay.
        after: Duration,
        /// Attempts made, this one included.
        history: History,
    },
    /// Not attempted: hand the event back unchanged (JetStream Nak).
    Redeliver {
        /// The delay.
        after: Duration,
        /// Why.
        why: NotAttempted,
    },
    /// Give up: publish the dead letter, then terminate the event.
    DeadLetter {
        /// The class the dead letter carries.
        class: FailureClass,
        /// Attempts made.
        history: History,
    },
    /// Drop it, counted (core, breaker open, `when_open = "shed"`).
    Shed,
}

/// The facts known before an attempt.
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    /// Delivery mode.
    pub mode: Mode,
    /// The breaker's answer.
    pub admission: Admission,
    /// The store's answer; `None` when it was not asked because the breaker
    /// rejected the event.
    pub claimed: Option<Claimed>,
    /// Whether the host is stopping.
    pub stopping: Stopping,
    /// Core NATS with the breaker open: dead-letter or shed.
    pub when_open: WhenOpen,
    /// What time it is, when a decision needs it.
    pub clock: GateClock,
}

/// The time a [`Gate`] or [`after_attempt`] decides at: read only by the
/// decisions that wait (breaker open, a record busy elsewhere, a failed
/// attempt's backoff), so the usual event reads no clock here; fixed in tests.
#[derive(Debug, Clone, Copy)]
pub enum GateClock {
    /// The clocks, read when asked.
    Live,
    /// A fixed moment: wall clock and the breaker's monotonic clock.
    At(SystemTime, std::time::Instant),
}

impl GateClock {
    /// Now, on the wall clock.
    pub fn now(&self) -> SystemTime {
        match self {
            GateClock::Live => SystemTime::now(),
            GateClock::At(now, _) => *now,
        }
    }

    /// Now, on the monotonic clock the breaker uses.
    pub fn instant(&self) -> std::time::Instant {
        match self {
            GateClock::Live => std::time::Instant::now(),
            GateClock::At(_, instant) => *instant,
        }
    }
}

/// Decide whether to run an attempt, or settle the event without one.
pub fn before_attempt(gate: &Gate) -> Decision {
    let core = gate.mode == Mode::Core;
    let history = match gate.claimed {
        Some(Claimed::Ours(h)) | Some(Claimed::GaveUp(h, _)) => h,
        _ => History::default(),
    };
    // A key settled before is settled whatever else holds.
    match gate.claimed {
        Some(Claimed::Completed) | Some(Claimed::DeadLettered) => return Decision::Skip,
        // Only the dead letter is owed: never run the handler again.
        Some(Claimed::GaveUp(history, class)) => return Decision::DeadLetter { class, history },
        _ => {}
    }
    match (gate.mode, gate.stopping) {
        (Mode::JetStream, Stopping::Draining | Stopping::Deadline) => {
            return redeliver(Duration::ZERO, NotAttempted::Stopping);
        }
        (Mode::Core, Stopping::Deadline) => {
            return Decision::DeadLetter {
                class: FailureClass::Shutdown,
                history,
            };
        }
        _ => {}
    }
    if let Admission::Rejected { until } = gate.admission {
        if core {
            return match gate.when_open {
                WhenOpen::Shed => Decision::Shed,
                WhenOpen::DeadLetter => Decision::DeadLetter {
                    class: FailureClass::CircuitOpen,
                    history,
                },
            };
        }
        let wait = until.saturating_duration_since(gate.clock.instant());
        return redeliver(wait, NotAttempted::BreakerOpen);
    }
    match gate.claimed {
        Some(Claimed::Busy { .. }) if core => Decision::Skip,
        Some(Claimed::Busy { until }) => {
            let wait = until.duration_since(gate.clock.now()).unwrap_or_default();
            redeliver(wait, NotAttempted::Busy)
        }
        // Core NATS cannot redeliver: run without the record rather than lose it.
        Some(Claimed::StoreUnavailable) if core => Decision::Run {
            attempt: 1,
            history: History::default(),
        },
        Some(Claimed::StoreUnavailable) => {
            redeliver(UNSETTLED_RETRY, NotAttempted::StoreUnavailable)
        }
        Some(Claimed::Ours(history)) => Decision::Run {
            attempt: history.attempts.saturating_add(1),
            history,
        },
        // Not asked although admitted: treat as a fresh event (cannot
        // happen: the trigger asks the store whenever the breaker admits).
        None => Decision::Run {
            attempt: 1,
            history: History::default(),
        },
        Some(Claimed::Completed | Claimed::DeadLettered | Claimed::GaveUp(..)) => {
            unreachable!("settled keys are handled above")
        }
    }
}

fn redeliver(wait: Duration, why: NotAttempted) -> Decision {
    let after = match why {
        NotAttempted::Stopping | NotAttempted::Abandoned => Duration::ZERO,
        _ => wait.clamp(REDELIVER_MIN, REDELIVER_MAX),
    };
    Decision::Redeliver { after, why }
}

/// Decide what follows an attempt, given the attempts before it.
pub fn after_attempt(
    mode: Mode,
    before: History,
    outcome: Outcome,
    policy: &RetryPolicy,
    clock: GateClock,
    rng: &mut impl Rng,
) -> Decision {
    let (class, retry_after) = match outcome {
        Outcome::Succeeded => return Decision::Ack,
        Outcome::Abandoned => return at_deadline(mode, before),
        Outcome::Failed { class, retry_after } => (class, retry_after),
    };
    // Read only for a failure: a success reads no clock here.
    let now = clock.now();
    let history = History {
        attempts: before.attempts.saturating_add(1),
        first_failure: Some(before.first_failure.unwrap_or(now)),
    };
    if !class.is_retryable() {
        return Decision::DeadLetter { class, history };
    }
    let delay = policy.delay(history.attempts, retry_after, rng);
    let since_first = history
        .first_failure
        .and_then(|first| now.duration_since(first).ok())
        .unwrap_or_default();
    if policy.should_retry(history.attempts, since_first, delay) {
        Decision::Retry {
            after: delay,
            history,
        }
    } else {
        Decision::DeadLetter { class, history }
    }
}

/// What becomes of an event not finished when `shutdown_grace` ends: a
/// JetStream event goes back to the stream untouched; a core event, which
/// nothing else can hold, is dead-lettered with class `shutdown`.
pub fn at_deadline(mode: Mode, history: History) -> Decision {
    match mode {
        Mode::JetStream => redeliver(Duration::ZERO, NotAttempted::Abandoned),
        Mode::Core => Decision::DeadLetter {
            class: FailureClass::Shutdown,
            history,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::retry::Jitter;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::time::Instant;

    /// A fixed moment for decisions that read the clock.
    fn at(now: SystemTime) -> GateClock {
        GateClock::At(now, Instant::now())
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(1),
            max_elapsed: Some(Duration::from_secs(60)),
            jitter: Jitter::Full,
        }
    }

    fn gate(mode: Mode, claimed: Option<Claimed>) -> Gate {
        Gate {
            mode,
            admission: Admission::Allowed,
            claimed,
            stopping: Stopping::No,
            when_open: WhenOpen::DeadLetter,
            clock: GateClock::At(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
                Instant::now(),
            ),
        }
    }

    fn failed(class: FailureClass) -> Outcome {
        Outcome::Failed {
            class,
            retry_after: None,
        }
    }

    #[test]
    fn a_fresh_key_runs_attempt_one_and_a_tried_one_continues_its_count() {
        let fresh = before_attempt(&gate(
            Mode::JetStream,
            Some(Claimed::Ours(History::default())),
        ));
        assert!(
            matches!(fresh, Decision::Run { attempt: 1, .. }),
            "{fresh:?}"
        );
        let tried = History {
            attempts: 2,
            first_failure: Some(SystemTime::UNIX_EPOCH),
        };
        let next = before_attempt(&gate(Mode::JetStream, Some(Claimed::Ours(tried))));
        assert_eq!(
            next,
            Decision::Run {
                attempt: 3,
                history: tried
            }
        );
    }

    #[test]
    fn settled_keys_are_skipped_in_both_modes() {
        for mode in [Mode::Core, Mode::JetStream] {
            for claimed in [Claimed::Completed, Claimed::DeadLettered] {
                assert_eq!(before_attempt(&gate(mode, Some(claimed))), Decision::Skip);
            }
        }
    }

    #[test]
    fn a_key_given_up_on_goes_to_the_dlq_without_running_even_when_the_breaker_is_open() {
        let h = History {
            attempts: 4,
            first_failure: Some(SystemTime::UNIX_EPOCH),
        };
        let mut g = gate(
            Mode::JetStream,
            Some(Claimed::GaveUp(h, FailureClass::Retryable)),
        );
        g.admission = Admission::Rejected {
            until: Instant::now() + Duration::from_secs(5),
        };
        assert_eq!(
            before_attempt(&g),
            Decision::DeadLetter {
                class: FailureClass::Retryable,
                history: h
            }
        );
    }

    #[test]
    fn non_attempts_redeliver_jetstream_and_never_count() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let busy = before_attempt(&gate(
            Mode::JetStream,
            Some(Claimed::Busy {
                until: now + Duration::from_secs(3),
            }),
        ));
        assert_eq!(
            busy,
            Decision::Redeliver {
                after: Duration::from_secs(3),
                why: NotAttempted::Busy
            }
        );
        let down = before_attempt(&gate(Mode::JetStream, Some(Claimed::StoreUnavailable)));
        assert!(matches!(
            down,
            Decision::Redeliver {
                why: NotAttempted::StoreUnavailable,
                ..
            }
        ));
        let mut open = gate(Mode::JetStream, None);
        open.admission = Admission::Rejected {
            until: open.clock.instant() + Duration::from_secs(2),
        };
        assert_eq!(
            before_attempt(&open),
            Decision::Redeliver {
                after: Duration::from_secs(2),
                why: NotAttempted::BreakerOpen
            }
        );
        let mut stopping = gate(Mode::JetStream, Some(Claimed::Ours(History::default())));
        stopping.stopping = Stopping::Draining;
        assert_eq!(
            before_attempt(&stopping),
            Decision::Redeliver {
                after: Duration::ZERO,
                why: NotAttempted::Stopping
            }
        );
    }

    #[test]
    fn core_events_run_while_draining_and_are_dead_lettered_at_the_deadline() {
        let mut g = gate(Mode::Core, Some(Claimed::Ours(History::default())));
        g.stopping = Stopping::Draining;
        assert!(matches!(before_attempt(&g), Decision::Run { .. }));
        g.stopping = Stopping::Deadline;
        assert!(matches!(
            before_attempt(&g),
            Decision::DeadLetter {
                class: FailureClass::Shutdown,
                ..
            }
        ));
        let h = History {
            attempts: 1,
            first_failure: Some(g.clock.now()),
        };
        assert_eq!(
            at_deadline(Mode::Core, h),
            Decision::DeadLetter {
                class: FailureClass::Shutdown,
                history: h
            }
        );
    }

    #[test]
    fn core_with_the_breaker_open_dead_letters_or_sheds_and_runs_without_a_store() {
        let mut g = gate(Mode::Core, None);
        g.admission = Admission::Rejected {
            until: g.clock.instant() + Duration::from_secs(1),
        };
        assert!(matches!(
            before_attempt(&g),
            Decision::DeadLetter {
                class: FailureClass::CircuitOpen,
                ..
            }
        ));
        g.when_open = WhenOpen::Shed;
        assert_eq!(before_attempt(&g), Decision::Shed);
        let down = before_attempt(&gate(Mode::Core, Some(Claimed::StoreUnavailable)));
        assert!(matches!(down, Decision::Run { attempt: 1, .. }));
        let busy = before_attempt(&gate(
            Mode::Core,
            Some(Claimed::Busy {
                until: SystemTime::now(),
            }),
        ));
        assert_eq!(busy, Decision::Skip);
    }

    #[test]
    fn retries_until_max_attempts_then_dead_letters_with_the_last_class() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let mut history = History::default();
        for n in 1..p.max_attempts {
            match after_attempt(
                Mode::JetStream,
                history,
                failed(FailureClass::Retryable),
                &p,
                at(t0),
                &mut rng,
            ) {
                Decision::Retry { history: h, .. } => {
                    assert_eq!(h.attempts, n);
                    assert_eq!(h.first_failure, Some(t0));
                    history = h;
                }
                other => panic!("attempt {n}: {other:?}"),
            }
        }
        assert_eq!(
            after_attempt(
                Mode::JetStream,
                history,
                failed(FailureClass::Trap),
                &p,
                at(t0),
                &mut rng
            ),
            Decision::DeadLetter {
                class: FailureClass::Trap,
                history: History {
                    attempts: p.max_attempts,
                    first_failure: Some(t0)
                }
            }
        );
    }

    #[test]
    fn permanent_failures_and_max_elapsed_end_retries() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(2);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        assert!(matches!(
            after_attempt(
                Mode::Core,
                History::default(),
                failed(FailureClass::Permanent),
                &p,
                at(t0),
                &mut rng
            ),
            Decision::DeadLetter {
                class: FailureClass::Permanent,
                history: History { attempts: 1, .. }
            }
        ));
        let old = History {
            attempts: 1,
            first_failure: Some(t0),
        };
        let late = t0 + Duration::from_secs(61);
        assert!(matches!(
            after_attempt(
                Mode::Core,
                old,
                failed(FailureClass::Retryable),
                &p,
                at(late),
                &mut rng
            ),
            Decision::DeadLetter { .. }
        ));
    }

    #[test]
    fn success_acks_and_an_abandoned_attempt_is_not_counted() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(3);
        let now = SystemTime::now();
        let h = History {
            attempts: 2,
            first_failure: Some(now),
        };
        assert_eq!(
            after_attempt(
                Mode::JetStream,
                h,
                Outcome::Succeeded,
                &p,
                at(now),
                &mut rng
            ),
            Decision::Ack
        );
        assert_eq!(
            after_attempt(
                Mode::JetStream,
                h,
                Outcome::Abandoned,
                &p,
                at(now),
                &mut rng
            ),
            Decision::Redeliver {
                after: Duration::ZERO,
                why: NotAttempted::Abandoned
            }
        );
    }

    // ---- property tests: a model of one event's whole life ----

    /// What one delivery of the event meets.
    #[derive(Debug, Clone)]
    enum Step {
        /// The store answers busy (another host's live lease).
        Busy,
        /// The store is down.
        StoreDown,
        /// The breaker rejects it.
        BreakerOpen,
        /// The host is stopping.
        Stopping,
        /// The attempt runs and ends so; `crash` = the host dies right after
        /// the attempt, before anything is recorded or acked; `dlq_down` =
        /// a dead letter owed now fails to publish.
        Attempt {
            outcome: OutcomeKind,
            crash: bool,
            dlq_down: bool,
        },
    }

    #[derive(Debug, Clone, Copy)]
    enum OutcomeKind {
        Ok,
        Retryable,
        Permanent,
        Trap,
        Abandoned,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Busy),
            Just(Step::StoreDown),
            Just(Step::BreakerOpen),
            Just(Step::Stopping),
            (
                prop_oneof![
                    3 => Just(OutcomeKind::Retryable),
                    1 => Just(OutcomeKind::Ok),
                    1 => Just(OutcomeKind::Permanent),
                    1 => Just(OutcomeKind::Trap),
                    1 => Just(OutcomeKind::Abandoned),
                ],
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(outcome, crash, dlq_down)| Step::Attempt {
                    outcome,
                    crash,
                    dlq_down
                }),
        ]
    }

    /// The dedup record as the model keeps it.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Record {
        Open(History),
        GaveUp(History, FailureClass),
        Completed,
        DeadLettered,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Walk a JetStream event through random deliveries, with the
        /// record kept as the trigger keeps it, and check the invariants.
        #[test]
        fn jetstream_settlement_keeps_its_invariants(steps in prop::collection::vec(step(), 1..40), seed in any::<u64>()) {
            let p = policy();
            let mut rng = StdRng::seed_from_u64(seed);
            let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
            let mut record = Record::Open(History::default());
            let mut real_attempts = 0u32;
            let mut saw_permanent = false;
            let mut succeeded = false;
            let mut acked = false;
            for (i, s) in steps.iter().enumerate() {
                if acked { break; }
                let now = t0 + Duration::from_millis(10 * i as u64);
                let before = record;
                let claimed = match (&record, s) {
                    (_, Step::BreakerOpen) => None,
                    (Record::Open(_), Step::Busy) => Some(Claimed::Busy { until: now + Duration::from_secs(1) }),
                    (_, Step::StoreDown) => Some(Claimed::StoreUnavailable),
                    (Record::Open(h), _) => Some(Claimed::Ours(*h)),
                    (Record::GaveUp(h, c), _) => Some(Claimed::GaveUp(*h, *c)),
                    (Record::Completed, _) => Some(Claimed::Completed),
                    (Record::DeadLettered, _) => Some(Claimed::DeadLettered),
                };
                let g = Gate {
                    mode: Mode::JetStream,
                    admission: if matches!(s, Step::BreakerOpen) { Admission::Rejected { until: Instant::now() } } else { Admission::Allowed },
                    claimed,
                    stopping: if matches!(s, Step::Stopping) { Stopping::Draining } else { Stopping::No },
                    when_open: WhenOpen::DeadLetter,
                    clock: GateClock::At(now, Instant::now()),
                };
                let decision = match before_attempt(&g) {
                    Decision::Run { attempt, history } => {
                        prop_assert_eq!(attempt, real_attempts + 1, "the plugin sees the real attempt number");
                        let Step::Attempt { outcome, crash, .. } = s else {
                            // Not an attempt step: the gate must not have run it.
                            prop_assert!(false, "ran on a non-attempt step {:?}", s);
                            unreachable!()
                        };
                        let outcome = match outcome {
                            OutcomeKind::Ok => Outcome::Succeeded,
                            OutcomeKind::Retryable => failed(FailureClass::Retryable),
                            OutcomeKind::Permanent => failed(FailureClass::Permanent),
                            OutcomeKind::Trap => failed(FailureClass::Trap),
                            OutcomeKind::Abandoned => Outcome::Abandoned,
                        };
                        if !matches!(outcome, Outcome::Abandoned) {
                            real_attempts += 1;
                        }
                        if *crash {
                            // Nothing recorded: the lease expires, the
                            // server redelivers. The attempt ran but its
                            // count was lost with the host: the record
                            // still says what it said.
                            real_attempts = match record { Record::Open(h) => h.attempts, _ => real_attempts };
                            continue;
                        }
                        saw_permanent |= matches!(outcome, Outcome::Failed { class: FailureClass::Permanent, .. });
                        succeeded |= matches!(outcome, Outcome::Succeeded);
                        after_attempt(Mode::JetStream, history, outcome, &p, at(now), &mut rng)
                    }
                    other => other,
                };
                match decision {
                    Decision::Ack => {
                        prop_assert!(succeeded, "acked without a confirmed outbox");
                        record = Record::Completed;
                        acked = true;
                    }
                    Decision::Skip => {
                        prop_assert!(matches!(before, Record::Completed | Record::DeadLettered));
                        acked = true;
                    }
                    Decision::Retry { history, .. } => {
                        prop_assert_eq!(history.attempts, real_attempts);
                        record = Record::Open(history);
                    }
                    Decision::Redeliver { .. } => {
                        prop_assert_eq!(record, before, "a non-attempt changed the record");
                    }
                    Decision::DeadLetter { class, history } => {
                        prop_assert!(
                            history.attempts >= p.max_attempts || saw_permanent || !class.is_retryable()
                                || history.first_failure.is_some_and(|f| now.duration_since(f).unwrap_or_default() + p.max_delay >= p.max_elapsed.unwrap()),
                            "dead-lettered early: {:?} after {} attempts", class, history.attempts
                        );
                        prop_assert!(history.attempts >= 1, "dead-lettered without any attempt");
                        if matches!(s, Step::Attempt { dlq_down: true, .. }) {
                            record = Record::GaveUp(history, class);
                        } else {
                            record = Record::DeadLettered;
                            acked = true;
                        }
                    }
                    Decision::Shed => prop_assert!(false, "JetStream never sheds"),
                    Decision::Run { .. } => unreachable!(),
                }
            }
        }

        /// Core events: every decision path ends in ack, retry, dead letter
        /// or shed, never a redelivery (core NATS cannot redeliver).
        #[test]
        fn core_settlement_never_redelivers(steps in prop::collection::vec(step(), 1..30), seed in any::<u64>()) {
            let p = policy();
            let mut rng = StdRng::seed_from_u64(seed);
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
            let mut history = History::default();
            for s in &steps {
                let mut g = gate(Mode::Core, Some(match s {
                    Step::StoreDown => Claimed::StoreUnavailable,
                    _ => Claimed::Ours(history),
                }));
                if matches!(s, Step::BreakerOpen) {
                    g.admission = Admission::Rejected { until: g.clock.instant() };
                    g.claimed = None;
                }
                if matches!(s, Step::Stopping) { g.stopping = Stopping::Deadline; }
                let d = match before_attempt(&g) {
                    Decision::Run { history: h, .. } => after_attempt(Mode::Core, h, failed(FailureClass::Retryable), &p, at(now), &mut rng),
                    other => other,
                };
                prop_assert!(!matches!(d, Decision::Redeliver { .. }), "{:?}", d);
                match d {
                    Decision::Retry { history: h, .. } => history = h,
                    _ => break,
                }
            }
        }
    }
}
