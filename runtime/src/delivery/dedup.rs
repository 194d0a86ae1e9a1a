//! Dedup records: which idempotency keys a plugin has completed, which are in
//! progress (a lease that expires, so a crashed host never blocks a key for
//! long), and which failed (with the time of the first failure, so retry
//! limits span redeliveries and hosts).
//!
//! Two stores behind one trait: [`MemoryStore`] for a single host with core
//! NATS only, and the NATS KV store ([`super::dedup_kv::KvStore`]) shared by
//! every host of a cluster.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// State of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// A host is handling it until `lease_until_ms`.
    InProgress,
    /// The last attempt failed; the key may be claimed again.
    Failed,
    /// Handled successfully: later deliveries are skipped.
    Completed,
}

/// The stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Current state.
    pub state: State,
    /// End of the in-progress lease, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until_ms: Option<u64>,
    /// First failure of this key, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failure_ms: Option<u64>,
}

/// A claim on a key, held while an attempt runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Store key (scope + hashed idempotency key).
    pub slot: String,
    /// Revision written when claiming (for compare-and-set).
    pub revision: u64,
    /// When this key first failed, if it has.
    pub first_failure: Option<SystemTime>,
}

/// Result of trying to claim a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours to handle.
    Acquired(Lease),
    /// Already handled: skip (ack) it.
    Completed,
    /// Another attempt holds the lease until then.
    Busy {
        /// When the other lease expires.
        until: SystemTime,
    },
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

/// Where dedup records live.
#[async_trait::async_trait]
pub trait DedupStore: Send + Sync {
    /// Claim `key` of `scope` (the plugin) for an attempt lasting up to `lease`.
    async fn claim(&self, scope: &str, key: &str, lease: Duration) -> Result<Claim, DedupError>;
    /// Mark the claimed key completed.
    async fn complete(&self, lease: &Lease) -> Result<(), DedupError>;
    /// Release the claim after a failed attempt, remembering the first failure.
    async fn fail(&self, lease: &Lease, at: SystemTime) -> Result<(), DedupError>;
    /// The store's name, for logs and status.
    fn name(&self) -> &'static str;
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

/// The storage slot of a key: the scope plus a hash of the key, so any key
/// (spaces, dots, unicode) maps to a valid NATS KV key of bounded length.
pub fn slot(scope: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "{scope}.{}",
        hex::encode(&Sha256::digest(key.as_bytes())[..16])
    )
}

/// Decide what a claim attempt should do given the current record.
/// `Ok(new record)` means write it (claim), `Err(claim)` means answer at once.
pub fn next_claim(
    current: Option<&Record>,
    now: SystemTime,
    lease: Duration,
) -> Result<Record, Claim> {
    let first_failure_ms = match current {
        None => None,
        Some(r) => match r.state {
            State::Completed => return Err(Claim::Completed),
            State::InProgress => {
                let until = r.lease_until_ms.unwrap_or(0);
                if epoch_ms(now) < until {
                    return Err(Claim::Busy {
                        until: from_epoch_ms(until),
                    });
                }
                r.first_failure_ms
            }
            State::Failed => r.first_failure_ms,
        },
    };
    Ok(Record {
        state: State::InProgress,
        lease_until_ms: Some(epoch_ms(now + lease)),
        first_failure_ms,
    })
}

/// An in-process store for single-host, core-NATS setups.
pub struct MemoryStore {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Record, u64, SystemTime)>>,
}

impl MemoryStore {
    /// A store forgetting completed keys after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        MemoryStore {
            ttl,
            entries: Mutex::default(),
        }
    }
}

#[async_trait::async_trait]
impl DedupStore for MemoryStore {
    async fn claim(&self, scope: &str, key: &str, lease: Duration) -> Result<Claim, DedupError> {
        let now = SystemTime::now();
        let slot = slot(scope, key);
        let mut entries = self.entries.lock().expect("dedup lock");
        if entries.len() % 4096 == 4095 {
            entries.retain(|_, (_, _, expires)| *expires > now);
        }
        let current = entries
            .get(&slot)
            .filter(|(_, _, expires)| *expires > now)
            .map(|(r, _, _)| r);
        match next_claim(current, now, lease) {
            Err(claim) => Ok(claim),
            Ok(record) => {
                let revision = entries.get(&slot).map(|(_, rev, _)| rev + 1).unwrap_or(1);
                let first_failure = record.first_failure_ms.map(from_epoch_ms);
                entries.insert(slot.clone(), (record, revision, now + self.ttl));
                Ok(Claim::Acquired(Lease {
                    slot,
                    revision,
                    first_failure,
                }))
            }
        }
    }

    async fn complete(&self, lease: &Lease) -> Result<(), DedupError> {
        let mut entries = self.entries.lock().expect("dedup lock");
        entries.insert(
            lease.slot.clone(),
            (
                Record {
                    state: State::Completed,
                    lease_until_ms: None,
                    first_failure_ms: None,
                },
                lease.revision + 1,
                SystemTime::now() + self.ttl,
            ),
        );
        Ok(())
    }

    async fn fail(&self, lease: &Lease, at: SystemTime) -> Result<(), DedupError> {
        let mut entries = self.entries.lock().expect("dedup lock");
        let first = lease.first_failure.unwrap_or(at);
        entries.insert(
            lease.slot.clone(),
            (
                Record {
                    state: State::Failed,
                    lease_until_ms: None,
                    first_failure_ms: Some(epoch_ms(first)),
                },
                lease.revision + 1,
                SystemTime::now() + self.ttl,
            ),
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

    #[tokio::test]
    async fn memory_store_walks_the_states() {
        let store = MemoryStore::new(Duration::from_secs(60));
        let Claim::Acquired(lease) = store.claim("p", "k", Duration::from_secs(5)).await.unwrap()
        else {
            panic!("first claim acquires");
        };
        assert!(matches!(
            store.claim("p", "k", Duration::from_secs(5)).await.unwrap(),
            Claim::Busy { .. }
        ));
        // Another plugin has its own scope.
        assert!(matches!(
            store.claim("q", "k", Duration::from_secs(5)).await.unwrap(),
            Claim::Acquired(_)
        ));
        let failed_at = SystemTime::now();
        store.fail(&lease, failed_at).await.unwrap();
        let Claim::Acquired(again) = store.claim("p", "k", Duration::from_secs(5)).await.unwrap()
        else {
            panic!("a failed key can be claimed again");
        };
        assert_eq!(again.first_failure.map(epoch_ms), Some(epoch_ms(failed_at)));
        store.complete(&again).await.unwrap();
        assert_eq!(
            store.claim("p", "k", Duration::from_secs(5)).await.unwrap(),
            Claim::Completed
        );
    }

    #[test]
    fn an_expired_lease_can_be_taken_over() {
        let now = SystemTime::now();
        let stale = Record {
            state: State::InProgress,
            lease_until_ms: Some(epoch_ms(now) - 1),
            first_failure_ms: Some(5),
        };
        let taken = next_claim(Some(&stale), now, Duration::from_secs(1)).unwrap();
        assert_eq!(taken.state, State::InProgress);
        assert_eq!(taken.first_failure_ms, Some(5));
        let live = Record {
            lease_until_ms: Some(epoch_ms(now) + 10_000),
            ..stale
        };
        assert!(matches!(
            next_claim(Some(&live), now, Duration::from_secs(1)),
            Err(Claim::Busy { .. })
        ));
    }

    #[test]
    fn slots_are_valid_kv_keys() {
        let s = slot("my-plugin", "weird key/with spaces.and.dots ✓");
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{s}"
        );
        assert_ne!(slot("p", "a"), slot("p", "b"));
    }
}
