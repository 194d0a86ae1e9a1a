//! The dedup store in a NATS KV bucket, shared by every host of a cluster.
//!
//! Claims are compare-and-set writes (`create` for a new key, tried first
//! since most keys are new; `update` with the expected revision for an
//! existing one), so two hosts can never both hold a key. A write whose reply
//! is lost is ambiguous: the re-read that follows recognises the lease by its
//! holder token and takes it as ours ([`super::dedup::is_own_lease`]).
//!
//! The bucket is opened in the background with backoff ([`open_in_background`]):
//! a host whose KV is unavailable at start never falls back to a private
//! in-memory store (which would break dedup across hosts); claims fail
//! meanwhile (JetStream events wait in the stream) and `/readyz` says why.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use super::dedup::{
    Claim, ClaimRequest, DedupError, DedupStore, Lease, Record, is_own_lease, next_claim, slot,
};
use crate::telemetry::health::{Health, keep_trying};

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

fn encode(record: &Record) -> Result<Bytes, DedupError> {
    serde_json::to_vec(record).map(Bytes::from).map_err(err)
}

impl KvStore {
    /// Open (creating if missing) the bucket `bucket` with record TTL `ttl`.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<KvStore, DedupError> {
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_string(),
                    description: "sluice idempotency records".into(),
                    history: 1,
                    max_age: ttl,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    err(format!(
                        "cannot open or create KV bucket `{bucket}`: {e} (is JetStream enabled on the server?)"
                    ))
                })?,
        };
        Ok(KvStore { kv })
    }
}

#[async_trait::async_trait]
impl DedupStore for KvStore {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Claim, DedupError> {
        let slot = slot(request.scope, request.key);
        // Most keys are new: try to create the record straight away (one
        // round trip). `create` fails when the key exists, or when the reply
        // was lost; the read-then-compare-and-set path below decides.
        if let Ok(record) = next_claim(None, SystemTime::now(), &request)
            && let Ok(revision) = self.kv.create(slot.as_str(), encode(&record)?).await
        {
            return Ok(Claim::Acquired(Lease {
                slot,
                revision,
                record,
            }));
        }
        // Two rounds: a lost compare-and-set race re-reads once. A write
        // that failed for another reason (the bucket refuses it, a timeout
        // that did not land) is no race: nobody else holds the key.
        let mut refused: Option<String> = None;
        for _ in 0..2 {
            let entry = self.kv.entry(slot.as_str()).await.map_err(err)?;
            let live = entry
                .as_ref()
                .filter(|e| e.operation == kv::Operation::Put)
                .and_then(|e| serde_json::from_slice::<Record>(&e.value).ok());
            if let (Some(entry), Some(current)) = (&entry, &live)
                && is_own_lease(current, &request)
            {
                // Our own write landed, its reply did not.
                return Ok(Claim::Acquired(Lease {
                    slot,
                    revision: entry.revision,
                    record: current.clone(),
                }));
            }
            let record = match next_claim(live.as_ref(), SystemTime::now(), &request) {
                Err(answer) => return Ok(answer.into()),
                Ok(record) => record,
            };
            let value = encode(&record)?;
            let written = match &entry {
                None => self.kv.create(slot.as_str(), value).await.map_err(|e| {
                    let race = e.kind() == kv::CreateErrorKind::AlreadyExists;
                    (race, e.to_string())
                }),
                Some(entry) => self
                    .kv
                    .update(slot.as_str(), value, entry.revision)
                    .await
                    .map_err(|e| {
                        let race = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
                        (race, e.to_string())
                    }),
            };
            match written {
                Ok(revision) => {
                    return Ok(Claim::Acquired(Lease {
                        slot,
                        revision,
                        record,
                    }));
                }
                Err((true, _)) => refused = None,
                Err((false, message)) => refused = Some(message),
            }
        }
        // The last write failed without a race: the store is the problem,
        // and saying "busy" would make a core event be skipped as a
        // duplicate of nothing.
        if let Some(message) = refused {
            return Err(err(format!("cannot write the claim: {message}")));
        }
        // Lost the race twice (or every write was ambiguous and the reads
        // showed someone else): treat the key as busy for a moment.
        Ok(Claim::Busy {
            until: SystemTime::now() + Duration::from_millis(500),
        })
    }

    async fn write(&self, lease: &mut Lease, record: Record) -> Result<(), DedupError> {
        let value = encode(&record)?;
        let revision = match self
            .kv
            .update(lease.slot.as_str(), value.clone(), lease.revision)
            .await
        {
            Ok(revision) => revision,
            // A write whose reply was lost (a timeout while the bucket elects
            // a leader) may have landed: then the record holds exactly what
            // we wrote, and its revision is ours to write over next.
            Err(e) => match self.kv.entry(lease.slot.as_str()).await {
                Ok(Some(entry))
                    if entry.operation == kv::Operation::Put && entry.value == value =>
                {
                    entry.revision
                }
                _ => return Err(err(e)),
            },
        };
        lease.revision = revision;
        lease.record = record;
        Ok(())
    }

    async fn create(&self, scope: &str, key: &str, record: Record) -> Result<Lease, DedupError> {
        let slot = slot(scope, key);
        let revision = self
            .kv
            .create(slot.as_str(), encode(&record)?)
            .await
            .map_err(err)?;
        Ok(Lease {
            slot,
            revision,
            record,
        })
    }

    async fn force(&self, lease: &Lease, record: Record) -> Result<(), DedupError> {
        self.kv
            .put(lease.slot.as_str(), encode(&record)?)
            .await
            .map(drop)
            .map_err(err)
    }

    fn name(&self) -> &'static str {
        "nats-kv"
    }
}

/// A store that answers "unavailable" until the one behind it is open.
pub struct Deferred {
    inner: OnceLock<Arc<dyn DedupStore>>,
    name: &'static str,
}

impl Deferred {
    fn get(&self) -> Result<&Arc<dyn DedupStore>, DedupError> {
        self.inner.get().ok_or_else(|| DedupError {
            store: self.name,
            message: "the KV bucket is not open yet (retrying in the background)".into(),
        })
    }
}

#[async_trait::async_trait]
impl DedupStore for Deferred {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Claim, DedupError> {
        self.get()?.claim(request).await
    }
    async fn write(&self, lease: &mut Lease, record: Record) -> Result<(), DedupError> {
        self.get()?.write(lease, record).await
    }
    async fn force(&self, lease: &Lease, record: Record) -> Result<(), DedupError> {
        self.get()?.force(lease, record).await
    }
    async fn create(&self, scope: &str, key: &str, record: Record) -> Result<Lease, DedupError> {
        self.get()?.create(scope, key, record).await
    }
    fn name(&self) -> &'static str {
        self.name
    }
    fn is_open(&self) -> bool {
        self.inner.get().is_some()
    }
}

/// Open the KV store, retrying with backoff until it opens or `stop`: the
/// store returned answers "unavailable" until then, and `health` carries
/// the reason (so `/readyz` says not ready).
pub fn open_in_background(
    js: jetstream::Context,
    bucket: String,
    ttl: Duration,
    replicas: usize,
    health: Health,
    stop: tokio_util::sync::CancellationToken,
) -> Arc<dyn DedupStore> {
    let deferred = Arc::new(Deferred {
        inner: OnceLock::new(),
        name: "nats-kv",
    });
    let slot = deferred.clone();
    keep_trying(
        health,
        format!("dedup store (KV bucket `{bucket}`)"),
        "JetStream events wait in their streams until it opens",
        stop,
        move || {
            let (js, bucket, slot) = (js.clone(), bucket.clone(), slot.clone());
            async move {
                let store = KvStore::open(&js, &bucket, ttl, replicas).await?;
                let _ = slot.inner.set(Arc::new(store));
                tracing::info!(bucket, "dedup store open");
                Ok::<(), DedupError>(())
            }
        },
    );
    deferred
}
