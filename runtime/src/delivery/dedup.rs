//! Dedup records: one per (plugin, idempotency key), shared by every host
//! through the store. A record says whether the key is settled (completed or
//! dead-lettered), leased by an attempt, owed a dead letter, or open, and it
//! carries the event's [`History`]: the real attempts made and the first
//! failure. That is what makes attempts host-counted: a redelivery that never
//! ran the plugin changes nothing, and the count survives crashes and hosts.
//!
//! A lease names its holder (a token unique to the claiming attempt), so a
//! host whose write landed but whose reply was lost recognises its own lease
//! on the re-read instead of taking it for someone else's.
//!
//! Two stores behind one trait: [`MemoryStore`] for a single host, and the
//! NATS KV store ([`super::dedup_kv::KvStore`]) shared by every host.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::settle::{Claimed, History};
use crate::engine::invoke::FailureClass;

/// State of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Claimable: never leased, or its last attempt failed or never ran.
    #[serde(alias = "failed")]
    Open,
    /// A host is handling it until `lease_until_ms`.
    InProgress,
    /// The policy gave up; the dead letter is not confirmed yet.
    GaveUp,
    /// Handled successfully: later deliveries are skipped.
    Completed,
    /// Dead-lettered: later deliveries (a lost Term) are skipped; a replay
    /// (a higher replay count) starts a fresh history.
    DeadLettered,
}

/// Why the policy gave up on a key, kept until its dead letter is confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GaveUp {
    /// The failure class of the last attempt.
    pub class: String,
    /// Its message (bounded by the engine).
    pub message: String,
    /// When the policy gave up, ms since the Unix epoch.
    pub at_ms: u64,
}

/// The stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Current state.
    pub state: State,
    /// End of the in-progress lease, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until_ms: Option<u64>,
    /// Who holds the lease (a token unique to one claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// Real attempts made.
    #[serde(default)]
    pub attempts: u32,
    /// First failure of this key, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failure_ms: Option<u64>,
    /// The replay count this history belongs to (`Sluice-Replay`).
    #[serde(default)]
    pub replay: u32,
    /// Set while a dead letter is owed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gave_up: Option<GaveUp>,
}

impl Record {
    fn open(history: History, replay: u32) -> Record {
        Record {
            state: State::Open,
            lease_until_ms: None,
            holder: None,
            attempts: history.attempts,
            first_failure_ms: history.first_failure.map(epoch_ms),
            replay,
            gave_up: None,
        }
    }

    /// The history this record carries.
    pub fn history(&self) -> History {
        History {
            attempts: self.attempts,
            first_failure: self.first_failure_ms.map(from_epoch_ms),
        }
    }
}

/// A claim on a key, held while an attempt runs (and renewed meanwhile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Store key (scope + hashed idempotency key).
    pub slot: String,
    /// Revision last written by this lease (for compare-and-set).
    pub revision: u64,
    /// The record as this lease wrote it.
    pub record: Record,
}

impl Lease {
    /// What the key's record says was tried before.
    pub fn claimed(&self) -> Claimed {
        match &self.record.gave_up {
            Some(gave_up) => Claimed::GaveUp(
                self.record.history(),
                FailureClass::parse(&gave_up.class).unwrap_or(FailureClass::Retryable),
            ),
            None => Claimed::Ours(self.record.history()),
        }
    }
}

/// Result of trying to claim a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours to handle (its record says what was tried before).
    Acquired(Lease),
    /// Already handled: skip (ack) it.
    Completed,
    /// Already dead-lettered (for this replay count): skip it.
    DeadLettered,
    /// Another attempt holds the lease until then.
    Busy {
        /// When the other lease expires.
        until: SystemTime,
    },
}

impl Claim {
    /// The claim as the settlement state machine sees it.
    pub fn claimed(&self) -> Claimed {
        match self {
            Claim::Acquired(lease) => lease.claimed(),
            Claim::Completed => Claimed::Completed,
            Claim::DeadLettered => Claimed::DeadLettered,
            Claim::Busy { until } => Claimed::Busy { until: *until },
        }
    }
}

/// The store could not be read or written.
#[derive(Debug, Error)]
#[error("dedup store ({store}): {message}")]
pub struct DedupError {
    /// Which store.
    pub store: &'static str,
    /// What failed.
    pub message: String,
}

/// One claim request.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The plugin (records are per plugin).
    pub scope: &'a str,
    /// The idempotency key.
    pub key: &'a str,
    /// How long the lease lasts unless renewed.
    pub lease: Duration,
    /// The claiming attempt's unique token ([`holder_token`]).
    pub holder: &'a str,
    /// The event's `Sluice-Replay` count: a higher one starts a fresh history.
    pub replay: u32,
}

/// Where dedup records live.
#[async_trait::async_trait]
pub trait DedupStore: Send + Sync {
    /// Claim a key for an attempt.
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Claim, DedupError>;
    /// Write `record` over the lease's record, if the lease is still ours
    /// (compare-and-set on its revision); the lease follows the write.
    async fn write(&self, lease: &mut Lease, record: Record) -> Result<(), DedupError>;
    /// Write `record` whatever the current revision (completion of an
    /// attempt whose lease was taken over: the handler did succeed).
    async fn force(&self, lease: &Lease, record: Record) -> Result<(), DedupError>;
    /// Create the record of a key nobody can have claimed (the first
    /// delivery of a JetStream message, keyed by its own stream position):
    /// the claim's round trip is skipped and the record is written once, when
    /// the event settles. Fails if a record exists.
    async fn create(&self, scope: &str, key: &str, record: Record) -> Result<Lease, DedupError>;
    /// The store's name, for logs and status.
    fn name(&self) -> &'static str;
    /// Whether the store is open (a store still being set up answers every
    /// call with an error).
    fn is_open(&self) -> bool {
        true
    }
}

/// What happens to a lease's record, written through [`DedupStore::write`].
impl Lease {
    /// A stand-in for a key never claimed (see [`DedupStore::create`]): its
    /// records are built like a claimed one's, then created.
    pub fn unclaimed(slot: String, replay: u32) -> Lease {
        Lease {
            slot,
            revision: 0,
            record: Record::open(History::default(), replay),
        }
    }

    /// The record after a renewal until `now + lease`.
    pub fn renewed(&self, now: SystemTime, lease: Duration) -> Record {
        Record {
            lease_until_ms: Some(epoch_ms(now + lease)),
            ..self.record.clone()
        }
    }

    /// The record of a completed key.
    pub fn completed(&self) -> Record {
        Record {
            state: State::Completed,
            lease_until_ms: None,
            holder: None,
            gave_up: None,
            ..self.record.clone()
        }
    }

    /// The record after the lease ends with `history` (an attempt failed and
    /// will be retried, or nothing ran: the history is then unchanged).
    pub fn released(&self, history: History) -> Record {
        Record::open(history, self.record.replay)
    }

    /// The record of a key the policy gave up on, before its dead letter is
    /// confirmed.
    pub fn given_up(
        &self,
        history: History,
        class: FailureClass,
        message: &str,
        at: SystemTime,
    ) -> Record {
        Record {
            state: State::GaveUp,
            gave_up: Some(GaveUp {
                class: class.as_str().to_string(),
                message: message.to_string(),
                at_ms: epoch_ms(at),
            }),
            ..Record::open(history, self.record.replay)
        }
    }

    /// The record of a dead-lettered key.
    pub fn dead_lettered(&self, history: History) -> Record {
        Record {
            state: State::DeadLettered,
            ..Record::open(history, self.record.replay)
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The inverse of [`epoch_ms`].
pub fn from_epoch_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A token unique to one claim in the whole cluster: a random host part and
/// a counter.
pub fn holder_token() -> String {
    static HOST: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let host = HOST.get_or_init(rand::random::<u64>);
    format!("{host:016x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The storage slot of a key: the scope plus a hash of the key, so any key
/// (spaces, dots, unicode) maps to a valid NATS KV key of bounded length.
pub fn slot(scope: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "{scope}.{}",
        hex::encode(&Sha256::digest(key.as_bytes())[..16])
    )
}

/// A claim answered without writing: the key is settled or leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unclaimable {
    /// Handled before.
    Completed,
    /// Dead-lettered before (for this replay count).
    DeadLettered,
    /// Leased until then.
    Busy {
        /// When the lease ends.
        until: SystemTime,
    },
}

impl From<Unclaimable> for Claim {
    fn from(answer: Unclaimable) -> Claim {
        match answer {
            Unclaimable::Completed => Claim::Completed,
            Unclaimable::DeadLettered => Claim::DeadLettered,
            Unclaimable::Busy { until } => Claim::Busy { until },
        }
    }
}

/// Decide what a claim should do given the current record. `Ok(new record)`
/// means write it (the claim), `Err(answer)` means answer at once.
pub fn next_claim(
    current: Option<&Record>,
    now: SystemTime,
    request: &ClaimRequest<'_>,
) -> Result<Record, Unclaimable> {
    let fresh = |history: History, gave_up: Option<GaveUp>| Record {
        state: State::InProgress,
        lease_until_ms: Some(epoch_ms(now + request.lease)),
        holder: Some(request.holder.to_string()),
        attempts: history.attempts,
        first_failure_ms: history.first_failure.map(epoch_ms),
        replay: request.replay,
        gave_up,
    };
    let Some(r) = current else {
        return Ok(fresh(History::default(), None));
    };
    if r.state == State::InProgress {
        let until = r.lease_until_ms.unwrap_or(0);
        if epoch_ms(now) < until {
            return Err(Unclaimable::Busy {
                until: from_epoch_ms(until),
            });
        }
    }
    // A replay starts over: new attempts, a new first failure.
    if request.replay > r.replay {
        return Ok(fresh(History::default(), None));
    }
    match r.state {
        State::Completed => Err(Unclaimable::Completed),
        State::DeadLettered => Err(Unclaimable::DeadLettered),
        State::Open | State::InProgress | State::GaveUp => {
            Ok(fresh(r.history(), r.gave_up.clone()))
        }
    }
}

/// Whether `current` is a lease that `request` itself wrote (a write whose
/// reply was lost).
pub fn is_own_lease(current: &Record, request: &ClaimRequest<'_>) -> bool {
    current.state == State::InProgress && current.holder.as_deref() == Some(request.holder)
}

/// An in-process store for single-host setups.
pub struct MemoryStore {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Record, u64, SystemTime)>>,
}

impl MemoryStore {
    /// A store forgetting keys after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        MemoryStore {
            ttl,
            entries: Mutex::default(),
        }
    }
}

#[async_trait::async_trait]
impl DedupStore for MemoryStore {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Claim, DedupError> {
        let now = SystemTime::now();
        let slot = slot(request.scope, request.key);
        let mut entries = self.entries.lock().expect("dedup lock");
        if entries.len() % 4096 == 4095 {
            entries.retain(|_, (_, _, expires)| *expires > now);
        }
        let current = entries
            .get(&slot)
            .filter(|(_, _, expires)| *expires > now)
            .map(|(r, _, _)| r);
        match next_claim(current, now, &request) {
            Err(answer) => Ok(answer.into()),
            Ok(record) => {
                let revision = entries.get(&slot).map(|(_, rev, _)| rev + 1).unwrap_or(1);
                entries.insert(slot.clone(), (record.clone(), revision, now + self.ttl));
                Ok(Claim::Acquired(Lease {
                    slot,
                    revision,
                    record,
                }))
            }
        }
    }

    async fn write(&self, lease: &mut Lease, record: Record) -> Result<(), DedupError> {
        let mut entries = self.entries.lock().expect("dedup lock");
        let current = entries.get(&lease.slot).map(|(_, rev, _)| *rev);
        if current != Some(lease.revision) {
            return Err(DedupError {
                store: "memory",
                message: format!("the lease on `{}` was taken over", lease.slot),
            });
        }
        let revision = lease.revision + 1;
        entries.insert(
            lease.slot.clone(),
            (record.clone(), revision, SystemTime::now() + self.ttl),
        );
        lease.revision = revision;
        lease.record = record;
        Ok(())
    }

    async fn create(&self, scope: &str, key: &str, record: Record) -> Result<Lease, DedupError> {
        let now = SystemTime::now();
        let slot = slot(scope, key);
        let mut entries = self.entries.lock().expect("dedup lock");
        if entries
            .get(&slot)
            .is_some_and(|(_, _, expires)| *expires > now)
        {
            return Err(DedupError {
                store: "memory",
                message: format!("a record for `{slot}` exists"),
            });
        }
        entries.insert(slot.clone(), (record.clone(), 1, now + self.ttl));
        Ok(Lease {
            slot,
            revision: 1,
            record,
        })
    }

    async fn force(&self, lease: &Lease, record: Record) -> Result<(), DedupError> {
        let mut entries = self.entries.lock().expect("dedup lock");
        let revision = entries
            .get(&lease.slot)
            .map(|(_, rev, _)| rev + 1)
            .unwrap_or(1);
        entries.insert(
            lease.slot.clone(),
            (record, revision, SystemTime::now() + self.ttl),
        );
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(scope: &'a str, holder: &'a str, replay: u32) -> ClaimRequest<'a> {
        ClaimRequest {
            scope,
            key: "k",
            lease: Duration::from_secs(5),
            holder,
            replay,
        }
    }

    async fn acquire(store: &MemoryStore, r: ClaimRequest<'_>) -> Lease {
        match store.claim(r).await.unwrap() {
            Claim::Acquired(lease) => lease,
            other => panic!("expected to acquire, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn memory_store_counts_real_attempts_and_settles() {
        let store = MemoryStore::new(Duration::from_secs(60));
        let mut lease = acquire(&store, request("p", "h1", 0)).await;
        assert_eq!(lease.claimed(), Claimed::Ours(History::default()));
        assert!(matches!(
            store.claim(request("p", "h2", 0)).await.unwrap(),
            Claim::Busy { .. }
        ));
        // Another plugin has its own scope.
        acquire(&store, request("q", "h3", 0)).await;
        // A failed attempt: one attempt recorded, first failure kept.
        let failed_at = from_epoch_ms(epoch_ms(SystemTime::now()));
        let history = History {
            attempts: 1,
            first_failure: Some(failed_at),
        };
        let record = lease.released(history);
        store.write(&mut lease, record).await.unwrap();
        let mut again = acquire(&store, request("p", "h4", 0)).await;
        assert_eq!(again.claimed(), Claimed::Ours(history));
        // A non-attempt (breaker open): the history is unchanged.
        let record = again.released(history);
        store.write(&mut again, record).await.unwrap();
        let mut third = acquire(&store, request("p", "h5", 0)).await;
        assert_eq!(third.claimed(), Claimed::Ours(history));
        let record = third.completed();
        store.write(&mut third, record).await.unwrap();
        assert_eq!(
            store.claim(request("p", "h6", 0)).await.unwrap(),
            Claim::Completed
        );
        // The previous holder's lease is gone: its writes are refused.
        let record = again.released(history);
        assert!(store.write(&mut again, record).await.is_err());
    }

    #[tokio::test]
    async fn a_key_given_up_on_is_owed_its_dead_letter_and_a_replay_starts_over() {
        let store = MemoryStore::new(Duration::from_secs(60));
        let mut lease = acquire(&store, request("p", "h1", 0)).await;
        let h = History {
            attempts: 3,
            first_failure: Some(from_epoch_ms(5)),
        };
        let record = lease.given_up(h, FailureClass::Trap, "boom", SystemTime::now());
        store.write(&mut lease, record).await.unwrap();
        let mut owed = acquire(&store, request("p", "h2", 0)).await;
        assert_eq!(owed.claimed(), Claimed::GaveUp(h, FailureClass::Trap));
        assert_eq!(owed.record.gave_up.as_ref().unwrap().message, "boom");
        let record = owed.dead_lettered(h);
        store.write(&mut owed, record).await.unwrap();
        assert_eq!(
            store.claim(request("p", "h3", 0)).await.unwrap(),
            Claim::DeadLettered
        );
        // Replayed once: a fresh history.
        let replayed = acquire(&store, request("p", "h4", 1)).await;
        assert_eq!(replayed.claimed(), Claimed::Ours(History::default()));
    }

    #[tokio::test]
    async fn an_unclaimed_first_delivery_creates_its_record_once_when_it_settles() {
        let store = MemoryStore::new(Duration::from_secs(60));
        let stand_in = Lease::unclaimed(String::new(), 0);
        let h = History {
            attempts: 1,
            first_failure: Some(from_epoch_ms(9)),
        };
        let mut lease = store.create("p", "k", stand_in.released(h)).await.unwrap();
        assert!(
            store.create("p", "k", stand_in.completed()).await.is_err(),
            "only once"
        );
        // The next delivery claims it with the history the first one left.
        let again = acquire(&store, request("p", "h1", 0)).await;
        assert_eq!(again.claimed(), Claimed::Ours(h));
        // The first delivery's own lease was taken over: its writes fail.
        let record = lease.completed();
        assert!(store.write(&mut lease, record).await.is_err());
    }

    #[test]
    fn an_expired_lease_can_be_taken_over_with_its_history() {
        let now = SystemTime::now();
        let stale = Record {
            state: State::InProgress,
            lease_until_ms: Some(epoch_ms(now) - 1),
            holder: Some("other".into()),
            attempts: 2,
            first_failure_ms: Some(5),
            replay: 0,
            gave_up: None,
        };
        let r = request("p", "me", 0);
        let taken = next_claim(Some(&stale), now, &r).unwrap();
        assert_eq!(taken.state, State::InProgress);
        assert_eq!((taken.attempts, taken.first_failure_ms), (2, Some(5)));
        assert_eq!(taken.holder.as_deref(), Some("me"));
        let live = Record {
            lease_until_ms: Some(epoch_ms(now) + 10_000),
            ..stale
        };
        assert!(matches!(
            next_claim(Some(&live), now, &r),
            Err(Unclaimable::Busy { .. })
        ));
        assert!(!is_own_lease(&live, &r));
        assert!(is_own_lease(&live, &request("p", "other", 0)));
    }

    #[test]
    fn old_records_still_parse() {
        let old: Record =
            serde_json::from_str(r#"{"state":"failed","first_failure_ms":7}"#).unwrap();
        assert_eq!(old.state, State::Open);
        assert_eq!(old.attempts, 0);
    }

    #[test]
    fn slots_are_valid_kv_keys_and_holders_unique() {
        let s = slot("my-plugin", "weird key/with spaces.and.dots ✓");
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{s}"
        );
        assert_ne!(slot("p", "a"), slot("p", "b"));
        assert_ne!(holder_token(), holder_token());
    }
}
