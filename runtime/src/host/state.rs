//! The `state` capability (contract 0.2.0): a plugin's key-value state in a
//! NATS KV bucket shared by every host running it, written like the outbox.
//!
//! Why it is built this way:
//! - each plugin has its own key space (`<plugin>.<key>` in the operator's
//!   bucket), so plugins cannot read or clobber each other's state;
//! - writes are buffered in a [`StateTxn`] during the attempt (its own reads
//!   see them) and committed by the dispatcher only when the handler
//!   succeeds, before the outbox, so a failed attempt writes nothing;
//! - each committed write is a JetStream publish to the key's subject with a
//!   deterministic `Nats-Msg-Id` (event key, plugin, state key, write index):
//!   a redelivered event whose writes were already committed (a crash
//!   between commit and ack) has them dropped as duplicates by the server,
//!   within the bucket's duplicate window (2 minutes);
//! - compare-and-swap is `Nats-Expected-Last-Subject-Sequence`: a conflict at
//!   commit fails the attempt as retryable, and the retry reads anew;
//! - a TTL is the server's per-message TTL (`Nats-TTL`, whole seconds; the
//!   bucket is created with limit markers).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::contract::{StateEntry, StateError};

/// Most writes one attempt may buffer.
pub const MAX_WRITES: usize = 100;
/// Most bytes (keys plus values) one attempt may buffer.
pub const MAX_WRITE_BYTES: usize = 1 << 20;
/// Longest key a plugin may use, in bytes.
pub const MAX_KEY: usize = 256;

/// One plugin's key space in the state bucket. Cheap to clone and small:
/// every event's invocation request carries one (the bucket handle alone is
/// over 1.5 KB, which each event's futures copied several times).
#[derive(Clone)]
pub struct StateSpace {
    kv: Arc<kv::Store>,
    js: Arc<jetstream::Context>,
    bucket: String,
    prefix: String,
}

impl std::fmt::Debug for StateSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSpace")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The state bucket cannot be opened or created.
#[derive(Debug, Error)]
#[error(
    "cannot open or create the state bucket `{bucket}`: {message}; check that JetStream is enabled and the host's credentials may use `$KV.{bucket}.>`"
)]
pub struct StateOpenError {
    /// The bucket.
    pub bucket: String,
    /// Why.
    pub message: String,
}

impl StateSpace {
    /// Whether `other` is this same key space (the same bucket handle and
    /// prefix), so one can stand for the other.
    pub fn is(&self, other: &StateSpace) -> bool {
        Arc::ptr_eq(&self.kv, &other.kv)
            && self.bucket == other.bucket
            && self.prefix == other.prefix
    }

    /// Open (creating if missing) `bucket` for `plugin`'s keys.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        plugin: &str,
    ) -> Result<StateSpace, StateOpenError> {
        let open_error = |e: &dyn std::fmt::Display| StateOpenError {
            bucket: bucket.to_string(),
            message: e.to_string(),
        };
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_string(),
                    description: "sluice plugin state".into(),
                    history: 1,
                    // Per-value TTLs (`Nats-TTL`) need limit markers.
                    limit_markers: Some(Duration::from_secs(1)),
                    ..Default::default()
                })
                .await
                .map_err(|e| open_error(&e))?,
        };
        Ok(StateSpace {
            kv: Arc::new(kv),
            js: Arc::new(js.clone()),
            bucket: bucket.to_string(),
            prefix: format!("{plugin}."),
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn read(&self, key: &str) -> Result<Option<StateEntry>, StateError> {
        let entry = self
            .kv
            .entry(self.full_key(key))
            .await
            .map_err(|e| StateError::Unavailable(format!("reading `{key}`: {e}")))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| StateEntry {
                value: e.value.to_vec(),
                revision: e.revision,
            }))
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            StateError::Unavailable(format!("listing keys under `{prefix}`: {e}"))
        };
        let mut keys = self.kv.keys().await.map_err(|e| unavailable(&e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| unavailable(&e))?;
            if let Some(own) = key.strip_prefix(&self.prefix)
                && own.starts_with(prefix)
            {
                out.push(own.to_string());
            }
        }
        Ok(out)
    }
}

/// What an attempt wants done to one key at commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Store this value (with a TTL).
    Set {
        /// The value.
        value: Vec<u8>,
        /// Expiry, if any.
        ttl: Option<Duration>,
    },
    /// Delete the key.
    Delete,
}

/// One buffered write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// The plugin's key (without its key-space prefix).
    pub key: String,
    /// What to do.
    pub op: WriteOp,
    /// Compare-and-swap: the revision the key must still have (0: absent).
    pub expected: Option<u64>,
}

/// The state calls of one attempt: reads go to the bucket (through the
/// attempt's own writes), writes are buffered for [`commit`].
#[derive(Debug, Default)]
pub struct StateTxn {
    space: Option<StateSpace>,
    writes: BTreeMap<String, StateWrite>,
    order: Vec<String>,
    bytes: usize,
    refused: u32,
}

impl StateTxn {
    /// A transaction on `space`; `None`: state not granted.
    pub fn new(space: Option<StateSpace>) -> StateTxn {
        StateTxn {
            space,
            ..StateTxn::default()
        }
    }

    /// Forget the previous event's writes (a reused instance), keeping the space.
    ///
    /// The space it already holds is kept when it is the same one (a warm
    /// instance's next event): no clone of its handles and names per event.
    pub fn reset(&mut self, space: Option<&StateSpace>) {
        let space = match (self.space.take(), space) {
            (Some(held), Some(wanted)) if held.is(wanted) => Some(held),
            (_, wanted) => wanted.cloned(),
        };
        *self = StateTxn::new(space);
    }

    /// State calls refused in this attempt (not granted, bad key, limits).
    pub fn refused(&self) -> u32 {
        self.refused
    }

    fn space(&mut self) -> Result<&StateSpace, StateError> {
        match &self.space {
            Some(space) => Ok(space),
            None => {
                self.refused += 1;
                Err(StateError::NotGranted(
                    "state is not granted: the manifest needs `state = true`, and the operator's `state_bucket` must not be `off`".into(),
                ))
            }
        }
    }

    fn check_key(&mut self, key: &str) -> Result<(), StateError> {
        if let Err(why) = valid_key(key) {
            self.refused += 1;
            return Err(StateError::InvalidKey(format!("`{key}`: {why}")));
        }
        Ok(())
    }

    /// `key`'s value as this attempt's writes left it.
    pub async fn get(&mut self, key: &str) -> Result<Option<StateEntry>, StateError> {
        self.space()?;
        self.check_key(key)?;
        if let Some(write) = self.writes.get(key) {
            return Ok(match &write.op {
                WriteOp::Set { value, .. } => Some(StateEntry {
                    value: value.clone(),
                    revision: 0,
                }),
                WriteOp::Delete => None,
            });
        }
        self.space()?.read(key).await
    }

    /// Buffer a write of `key`.
    pub fn write(
        &mut self,
        key: &str,
        op: WriteOp,
        expected: Option<u64>,
    ) -> Result<(), StateError> {
        self.space()?;
        self.check_key(key)?;
        let size = key.len()
            + match &op {
                WriteOp::Set { value, .. } => value.len(),
                WriteOp::Delete => 0,
            };
        let new_key = !self.writes.contains_key(key);
        if (new_key && self.writes.len() >= MAX_WRITES)
            || self.bytes.saturating_add(size) > MAX_WRITE_BYTES
        {
            self.refused += 1;
            return Err(StateError::LimitExceeded(format!(
                "at most {MAX_WRITES} keys and {MAX_WRITE_BYTES} bytes written per event"
            )));
        }
        self.bytes += size;
        // A later write of the same key replaces the earlier one, keeping a
        // compare-and-swap's expectation.
        let expected = expected.or_else(|| self.writes.get(key).and_then(|w| w.expected));
        if new_key {
            self.order.push(key.to_string());
        }
        self.writes.insert(
            key.to_string(),
            StateWrite {
                key: key.to_string(),
                op,
                expected,
            },
        );
        Ok(())
    }

    /// Keys under `prefix` as this attempt's writes left them, sorted.
    pub async fn list(&mut self, prefix: &str) -> Result<Vec<String>, StateError> {
        let mut keys: std::collections::BTreeSet<String> =
            self.space()?.keys(prefix).await?.into_iter().collect();
        for (key, write) in self.writes.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            match write.op {
                WriteOp::Set { .. } => keys.insert(key.clone()),
                WriteOp::Delete => keys.remove(key),
            };
        }
        Ok(keys.into_iter().collect())
    }

    /// Take the buffered writes (in first-write order) and the space to commit them to.
    pub fn take(&mut self) -> Option<(StateSpace, Vec<StateWrite>)> {
        let space = self.space.clone()?;
        let mut writes = std::mem::take(&mut self.writes);
        let ordered: Vec<StateWrite> = std::mem::take(&mut self.order)
            .into_iter()
            .filter_map(|k| writes.remove(&k))
            .collect();
        self.bytes = 0;
        (!ordered.is_empty()).then_some((space, ordered))
    }
}

/// Letters, digits and `-_/=.`, not starting or ending with `.`, at most [`MAX_KEY`] bytes.
fn valid_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("a key cannot be empty");
    }
    if key.len() > MAX_KEY {
        return Err("a key is at most 256 bytes");
    }
    if key.starts_with('.') || key.ends_with('.') || key.contains("..") {
        return Err("a key cannot start or end with `.` or contain `..`");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_/=.".contains(&b))
    {
        return Err("a key may hold only letters, digits and `-_/=.`");
    }
    Ok(())
}

/// Why committing an attempt's state writes failed (the attempt then fails as retryable).
#[derive(Debug, Error)]
pub enum CommitError {
    /// A compare-and-swap's revision no longer matched.
    #[error(
        "state key `{key}` changed since it was read (compare-and-swap conflict); the retry reads it anew"
    )]
    Conflict {
        /// The plugin's key.
        key: String,
    },
    /// The store could not be reached.
    #[error("committing state key `{key}` failed: {message}")]
    Unavailable {
        /// The plugin's key.
        key: String,
        /// Why.
        message: String,
    },
}

/// The deterministic message id of the `index`-th state write of event
/// `event_key` by `plugin`, so a redelivered event's writes are deduplicated.
pub fn write_id(event_key: &str, plugin: &str, key: &str, index: usize) -> String {
    let digest = Sha256::new()
        .chain_update(event_key.as_bytes())
        .chain_update([0])
        .chain_update(plugin.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .chain_update(index.to_le_bytes())
        .finalize();
    format!("state-{}", hex::encode(&digest[..16]))
}

/// Apply `writes` to `space`, in order, each confirmed by JetStream. A
/// duplicate (already committed by an earlier delivery of the event) counts
/// as done.
pub async fn commit(
    space: &StateSpace,
    event_key: &str,
    plugin: &str,
    writes: Vec<StateWrite>,
) -> Result<(), CommitError> {
    for (index, write) in writes.into_iter().enumerate() {
        let subject = format!("$KV.{}.{}", space.bucket, space.full_key(&write.key));
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            write_id(event_key, plugin, &write.key, index).as_str(),
        );
        if let Some(expected) = write.expected {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                expected.to_string().as_str(),
            );
        }
        let payload = match write.op {
            WriteOp::Set { value, ttl } => {
                if let Some(ttl) = ttl {
                    let secs = ttl.as_millis().div_ceil(1000).max(1);
                    headers.insert("Nats-TTL", format!("{secs}s").as_str());
                }
                Bytes::from(value)
            }
            WriteOp::Delete => {
                headers.insert("KV-Operation", "DEL");
                Bytes::new()
            }
        };
        let unavailable = |message: String| CommitError::Unavailable {
            key: write.key.clone(),
            message,
        };
        let ack = space
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match ack.await {
            Ok(_) => {}
            Err(e) if is_wrong_sequence(&e.to_string()) => {
                return Err(CommitError::Conflict { key: write.key });
            }
            Err(e) => return Err(unavailable(e.to_string())),
        }
    }
    Ok(())
}

/// JetStream's "wrong last sequence" refusal (error code 10071).
fn is_wrong_sequence(message: &str) -> bool {
    message.contains("wrong last sequence") || message.contains("10071")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for good in ["total", "user/42", "a=b", "x-y_z.w"] {
            assert!(valid_key(good).is_ok(), "{good}");
        }
        for bad in ["", ".a", "a.", "a..b", "a b", "a*", "a>", &"k".repeat(300)] {
            assert!(valid_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn write_ids_are_stable_and_distinct() {
        let a = write_id("ev", "p", "k", 0);
        assert_eq!(a, write_id("ev", "p", "k", 0));
        assert_ne!(a, write_id("ev2", "p", "k", 0));
        assert_ne!(a, write_id("ev", "q", "k", 0));
        assert_ne!(a, write_id("ev", "p", "k", 1));
    }

    #[test]
    fn an_ungranted_txn_refuses_and_counts() {
        let mut txn = StateTxn::new(None);
        let e = txn.write("k", WriteOp::Delete, None).unwrap_err();
        assert!(matches!(e, StateError::NotGranted(_)));
        assert_eq!(txn.refused(), 1);
        assert!(txn.take().is_none());
    }
}
