//! Operating the dead-letter queue: list entries, replay them to their
//! original subject, purge them. Used by `sluice dlq` and by tests.
//!
//! Replay republishes with the original payload, headers and idempotency key
//! (pinned in `Sluice-Idempotency-Key`) and deletes the DLQ entry only after
//! the republish is acknowledged (by the stream capturing the subject; for a
//! subject no stream captures, after the server confirmed receipt).
//!
//! Which of the two applies is asked of the server, and only a definite "no
//! stream captures this subject" answer means core NATS: any other failure of
//! that lookup (a timeout during a leader election, JetStream unavailable, a
//! lost reply) keeps the entry and fails the replay, because publishing on
//! core NATS while a stream does capture the subject would bypass the stream
//! and the entry would be deleted for an event nobody stored.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use thiserror::Error;

use crate::delivery::dead_letter::{DLQ_SUBJECT_PREFIX, DeadLetter, dlq_subject};

/// An entry as stored: its DLQ sequence plus the dead letter.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Sequence in the DLQ stream (what `--seq` selects).
    pub seq: u64,
    /// The dead letter.
    pub letter: DeadLetter,
}

/// Which entries an operation applies to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this plugin's entries.
    pub plugin: Option<String>,
    /// Only entries that last failed at or after this time.
    pub since: Option<SystemTime>,
    /// Only entries whose error class or message contains this text (case-insensitive).
    pub error: Option<String>,
    /// Only the entry with this sequence.
    pub seq: Option<u64>,
}

impl Filter {
    fn matches(&self, entry: &Entry) -> bool {
        let letter = &entry.letter;
        self.seq.is_none_or(|s| s == entry.seq)
            && self.since.is_none_or(|t| letter.last_failure >= t)
            && self.error.as_ref().is_none_or(|text| {
                let text = text.to_lowercase();
                letter.error.to_lowercase().contains(&text)
                    || letter.error_class.to_lowercase().contains(&text)
            })
    }
}

/// What went wrong operating the DLQ.
#[derive(Debug, Error)]
pub enum DlqAdminError {
    /// The DLQ stream is missing or unreachable.
    #[error("DLQ stream `{stream}`: {message}")]
    Stream {
        /// Stream name.
        stream: String,
        /// Why.
        message: String,
    },
    /// Reading entries failed.
    #[error("reading the DLQ failed: {0}")]
    Read(String),
    /// Whether a stream captures the entry's subject could not be found out;
    /// the entry is kept (replaying on a guess could lose it).
    #[error(
        "replaying DLQ entry {seq} to `{subject}`: cannot tell whether a stream captures the subject ({message}); the entry is kept. Check that JetStream is available (`nats stream ls`) and replay again"
    )]
    StreamLookup {
        /// DLQ sequence.
        seq: u64,
        /// Target subject.
        subject: String,
        /// Why.
        message: String,
    },
    /// A replay publish was not acknowledged; the entry is kept.
    #[error("replaying DLQ entry {seq} to `{subject}` failed: {message}; the entry is kept")]
    Replay {
        /// DLQ sequence.
        seq: u64,
        /// Target subject.
        subject: String,
        /// Why.
        message: String,
    },
}

async fn open(js: &jetstream::Context, name: &str) -> Result<stream::Stream, DlqAdminError> {
    js.get_stream(name)
        .await
        .map_err(|e| DlqAdminError::Stream {
            stream: name.to_string(),
            message: format!(
                "{e} (the host creates it at start; is this the right server and --dlq-stream?)"
            ),
        })
}

/// List entries matching `filter`, oldest first.
pub async fn list(
    js: &jetstream::Context,
    stream_name: &str,
    filter: &Filter,
) -> Result<Vec<Entry>, DlqAdminError> {
    let stream = open(js, stream_name).await?;
    let subject = match &filter.plugin {
        Some(plugin) => dlq_subject(plugin),
        None => format!("{DLQ_SUBJECT_PREFIX}.>"),
    };
    if let Some(seq) = filter.seq {
        let Ok(raw) = stream.get_raw_message(seq).await else {
            return Ok(Vec::new());
        };
        let entry = Entry {
            seq,
            letter: DeadLetter::from_message(Some(&raw.headers), raw.payload),
        };
        let plugin_ok = filter
            .plugin
            .as_ref()
            .is_none_or(|p| &entry.letter.plugin == p);
        return Ok(if plugin_ok && filter.matches(&entry) {
            vec![entry]
        } else {
            Vec::new()
        });
    }
    let mut subjects = stream
        .info_with_subjects(subject.clone())
        .await
        .map_err(|e| DlqAdminError::Read(e.to_string()))?;
    let mut total = 0usize;
    while let Some(item) = subjects.next().await {
        total += item.map_err(|e| DlqAdminError::Read(e.to_string()))?.1;
    }
    if total == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| DlqAdminError::Read(e.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| DlqAdminError::Read(e.to_string()))?;
    let mut entries = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .map_err(|_| DlqAdminError::Read("timed out reading entries".into()))?;
        let Some(message) = next else { break };
        let message = message.map_err(|e| DlqAdminError::Read(e.to_string()))?;
        let (seq, pending) = {
            let info = message
                .info()
                .map_err(|e| DlqAdminError::Read(e.to_string()))?;
            (info.stream_sequence, info.pending)
        };
        let entry = Entry {
            seq,
            letter: DeadLetter::from_message(message.headers.as_ref(), message.payload.clone()),
        };
        if filter.matches(&entry) {
            entries.push(entry);
        }
        if pending == 0 {
            break;
        }
    }
    Ok(entries)
}

/// Republish one entry to its original subject; delete it once acknowledged.
pub async fn replay_one(
    client: &async_nats::Client,
    js: &jetstream::Context,
    stream_name: &str,
    entry: &Entry,
) -> Result<(), DlqAdminError> {
    let (subject, headers, payload) = entry.letter.replay_message();
    let fail = |message: String| DlqAdminError::Replay {
        seq: entry.seq,
        subject: subject.clone(),
        message,
    };
    if captured_by_stream(js, &subject)
        .await
        .map_err(|message| DlqAdminError::StreamLookup {
            seq: entry.seq,
            subject: subject.clone(),
            message,
        })?
    {
        let ack = js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| fail(e.to_string()))?;
        ack.await.map_err(|e| fail(e.to_string()))?;
    } else {
        client
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| fail(e.to_string()))?;
        client.flush().await.map_err(|e| fail(e.to_string()))?;
    }
    let stream = open(js, stream_name).await?;
    stream
        .delete_message(entry.seq)
        .await
        .map_err(|e| fail(format!("republished, but deleting the entry failed: {e}")))?;
    Ok(())
}

/// Whether a stream captures `subject`: `Ok(false)` only on the server's
/// definite answer that none does; every other failure is an `Err`.
async fn captured_by_stream(js: &jetstream::Context, subject: &str) -> Result<bool, String> {
    use async_nats::jetstream::context::GetStreamByNameErrorKind as Kind;
    match js.stream_by_subject(subject).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == Kind::NotFound => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Delete the entries matching `filter` (all of a plugin's, or all); returns how many.
pub async fn purge(
    js: &jetstream::Context,
    stream_name: &str,
    plugin: Option<&str>,
) -> Result<u64, DlqAdminError> {
    let stream = open(js, stream_name).await?;
    let response = match plugin {
        Some(plugin) => stream.purge().filter(dlq_subject(plugin)).await,
        None => stream.purge().await,
    }
    .map_err(|e| DlqAdminError::Read(e.to_string()))?;
    Ok(response.purged)
}
