//! The dedup store in a NATS KV bucket, shared by every host of a cluster.
//!
//! Claims are compare-and-set writes (`create` for a new key, tried first
//! since most keys are new; `update` with the expected revision for an
//! existing one), so two hosts can never both hold a key. The bucket's max age is the record TTL.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use super::dedup::{
    Claim, DedupError, DedupStore, Lease, Record, State, epoch_ms, from_epoch_ms, next_claim, slot,
};

/// Dedup records in the KV bucket.
pub struct KvStore {
    kv: kv::Store,
}

fn err(message: impl std::fmt::Display) -> DedupError {
    DedupError {
        store: "nats-kv",
        message: message.to_string(),
    }
}

impl KvStore {
    /// Open (creating if missing) the bucket `bucket` with record TTL `ttl`.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        ttl: Duration,
    ) -> Result<KvStore, DedupError> {
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_string(),
                    description: "sluice idempotency records".into(),
                    history: 1,
                    max_age: ttl,
                    ..Default::default()
                })
                .await
                .map_err(|e| err(format!("cannot create KV bucket `{bucket}`: {e} (is JetStream enabled on the server?)")))?,
        };
        Ok(KvStore { kv })
    }

    async fn write(&self, slot: &str, record: &Record, revision: u64) -> Result<u64, DedupError> {
        let value = Bytes::from(serde_json::to_vec(record).map_err(err)?);
        self.kv.update(slot, value, revision).await.map_err(err)
    }
}

#[async_trait::async_trait]
impl DedupStore for KvStore {
    async fn claim(&self, scope: &str, key: &str, lease: Duration) -> Result<Claim, DedupError> {
        let slot = slot(scope, key);
        // Most keys are new: try to create the record straight away (one
        // round trip). `create` fails when the key exists (or the write
        // failed), and the read-then-compare-and-set path below decides.
        if let Ok(record) = next_claim(None, SystemTime::now(), lease) {
            let value = Bytes::from(serde_json::to_vec(&record).map_err(err)?);
            if let Ok(revision) = self.kv.create(slot.as_str(), value).await {
                return Ok(Claim::Acquired(Lease {
                    slot,
                    revision,
                    first_failure: None,
                }));
            }
        }
        // Two rounds: a lost compare-and-set race re-reads once.
        for _ in 0..2 {
            let now = SystemTime::now();
            let entry = self.kv.entry(slot.as_str()).await.map_err(err)?;
            let live = entry
                .as_ref()
                .filter(|e| e.operation == kv::Operation::Put)
                .and_then(|e| serde_json::from_slice::<Record>(&e.value).ok());
            let record = match next_claim(live.as_ref(), now, lease) {
                Err(claim) => return Ok(claim),
                Ok(record) => record,
            };
            let value = Bytes::from(serde_json::to_vec(&record).map_err(err)?);
            let written = match &entry {
                None => self
                    .kv
                    .create(slot.as_str(), value)
                    .await
                    .map_err(|e| e.to_string()),
                Some(e) => self
                    .kv
                    .update(slot.as_str(), value, e.revision)
                    .await
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(revision) => {
                    return Ok(Claim::Acquired(Lease {
                        slot,
                        revision,
                        first_failure: record.first_failure_ms.map(from_epoch_ms),
                    }));
                }
                Err(_) => continue,
            }
        }
        // Lost the race twice: someone else is on it.
        Ok(Claim::Busy {
            until: SystemTime::now() + Duration::from_millis(500),
        })
    }

    async fn complete(&self, lease: &Lease) -> Result<(), DedupError> {
        let record = Record {
            state: State::Completed,
            lease_until_ms: None,
            first_failure_ms: None,
        };
        match self.write(&lease.slot, &record, lease.revision).await {
            Ok(_) => Ok(()),
            // Our lease expired and was taken over; the handler did succeed, so
            // record completion anyway.
            Err(_) => {
                let value = Bytes::from(serde_json::to_vec(&record).map_err(err)?);
                self.kv
                    .put(lease.slot.as_str(), value)
                    .await
                    .map(drop)
                    .map_err(err)
            }
        }
    }

    async fn fail(&self, lease: &Lease, at: SystemTime) -> Result<(), DedupError> {
        let record = Record {
            state: State::Failed,
            lease_until_ms: None,
            first_failure_ms: Some(epoch_ms(lease.first_failure.unwrap_or(at))),
        };
        // If the lease was taken over, the new holder owns the record now.
        let _ = self.write(&lease.slot, &record, lease.revision).await;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "nats-kv"
    }
}
