//! Dead-lettering: after the retry policy gives up (or on a permanent error),
//! the event goes to the DLQ stream with everything needed to understand and
//! replay it, and only once JetStream has acknowledged that publish is the
//! original settled. Entries can be listed and replayed to their original
//! subject with their original idempotency key.
//!
//! An entry is the original payload, byte for byte, with the original headers
//! and the context in `Sluice-*` headers, on subject `sluice.dlq.<plugin>`.

use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use thiserror::Error;

use super::dedup::epoch_ms;
use super::key::{MSG_ID_HEADER, REPLAY_KEY_HEADER, REPLAY_PLUGIN_HEADER};

/// Subject prefix of every DLQ entry (`sluice.dlq.<plugin>`); never publishable by plugins.
pub const DLQ_SUBJECT_PREFIX: &str = "sluice.dlq";
/// Default name of the DLQ stream.
pub const DEFAULT_DLQ_STREAM: &str = "SLUICE_DLQ";

/// Header names of the context fields.
pub mod header {
    /// Plugin name.
    pub const PLUGIN: &str = "Sluice-Plugin";
    /// Plugin version (content hash).
    pub const VERSION: &str = "Sluice-Plugin-Version";
    /// The subject the event was published on.
    pub const SUBJECT: &str = "Sluice-Original-Subject";
    /// The event's idempotency key.
    pub const KEY: &str = "Sluice-Idempotency-Key";
    /// Attempts made.
    pub const ATTEMPTS: &str = "Sluice-Attempts";
    /// Failure class (`retryable`, `permanent`, `deadline-exceeded`, ...).
    pub const ERROR_CLASS: &str = "Sluice-Error-Class";
    /// Failure message (one line, truncated to 2 KiB).
    pub const ERROR: &str = "Sluice-Error";
    /// First failure, RFC 3339.
    pub const FIRST_FAILURE: &str = "Sluice-First-Failure";
    /// Last failure, RFC 3339.
    pub const LAST_FAILURE: &str = "Sluice-Last-Failure";
    /// Source stream (JetStream events).
    pub const STREAM: &str = "Sluice-Stream";
    /// Source stream sequence (JetStream events).
    pub const SEQUENCE: &str = "Sluice-Sequence";
    /// Trace id (from `traceparent`, else generated).
    pub const TRACE_ID: &str = "Sluice-Trace-Id";
    /// How many times this event was replayed before this entry.
    pub const REPLAY: &str = "Sluice-Replay";
    /// The original `Nats-Msg-Id`, if the event had one.
    pub const ORIGINAL_MSG_ID: &str = "Sluice-Original-Msg-Id";
}

/// The `Sluice-Replay` count of a message (0 if never replayed).
pub fn replay_count(headers: Option<&HeaderMap>) -> u32 {
    headers
        .and_then(|h| h.get(header::REPLAY))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

/// The plugin a `sluice dlq replay` addressed this message to: `None` for
/// an original event, and for a replay made before `Sluice-Replay-Plugin`
/// existed (such a replay is for every plugin on the subject).
pub fn replay_target(headers: Option<&HeaderMap>) -> Option<&str> {
    let headers = headers?;
    headers
        .get(REPLAY_KEY_HEADER)
        .filter(|key| !key.as_str().is_empty())?;
    headers
        .get(REPLAY_PLUGIN_HEADER)
        .map(|target| target.as_str())
        .filter(|target| !target.is_empty())
}

/// The `Sluice-Replay` count of a message as `plugin` should see it: a
/// replay addressed to another plugin (`Sluice-Replay-Plugin`) is, for this
/// one, the original event again, with the original's count (one less), so
/// its completed record is not reopened (see `key::derive_key_for`).
pub fn replay_count_for(plugin: &str, headers: Option<&HeaderMap>) -> u32 {
    let count = replay_count(headers);
    let target = headers.and_then(|h| h.get(REPLAY_PLUGIN_HEADER));
    match target {
        Some(target) if target.as_str() != plugin => count.saturating_sub(1),
        _ => count,
    }
}

/// The subject of a plugin's DLQ entries.
pub fn dlq_subject(plugin: &str) -> String {
    format!("{DLQ_SUBJECT_PREFIX}.{plugin}")
}

/// Everything recorded about a dead-lettered event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Plugin name.
    pub plugin: String,
    /// Plugin version hash.
    pub version: String,
    /// Original subject.
    pub subject: String,
    /// Original headers (in order; `Nats-Msg-Id` included if it was there).
    pub headers: Vec<(String, String)>,
    /// Original payload.
    pub payload: Bytes,
    /// Source stream and sequence (JetStream).
    pub stream: Option<String>,
    /// Source sequence (JetStream).
    pub sequence: Option<u64>,
    /// Attempts made.
    pub attempts: u32,
    /// Failure class.
    pub error_class: String,
    /// Failure message.
    pub error: String,
    /// Idempotency key.
    pub key: String,
    /// First failure.
    pub first_failure: SystemTime,
    /// Last failure.
    pub last_failure: SystemTime,
    /// Trace id.
    pub trace_id: String,
    /// Replays before this failure.
    pub replay: u32,
}

/// Failure to dead-letter or to read the DLQ.
#[derive(Debug, Error)]
pub enum DlqError {
    /// The DLQ stream cannot be created or found.
    #[error(
        "DLQ stream `{stream}` is not available: {message} (is JetStream enabled on the NATS server?)"
    )]
    Stream {
        /// Stream name.
        stream: String,
        /// Why.
        message: String,
    },
    /// The publish was not acknowledged.
    #[error("publishing to the DLQ ({subject}) was not acknowledged: {message}")]
    Publish {
        /// DLQ subject.
        subject: String,
        /// Why.
        message: String,
    },
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn one_line(s: &str, max: usize) -> String {
    let mut line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > max {
        let mut cut = max;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

impl DeadLetter {
    /// The DLQ message: subject, headers and payload.
    pub fn to_message(&self) -> (String, HeaderMap, Bytes) {
        let mut h = HeaderMap::new();
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case(MSG_ID_HEADER) {
                h.insert(header::ORIGINAL_MSG_ID, value.as_str());
            } else if !name.starts_with("Sluice-") {
                h.append(name.as_str(), value.as_str());
            }
        }
        h.insert(header::PLUGIN, self.plugin.as_str());
        h.insert(header::VERSION, self.version.as_str());
        h.insert(header::SUBJECT, self.subject.as_str());
        h.insert(header::KEY, self.key.as_str());
        h.insert(header::ATTEMPTS, self.attempts.to_string().as_str());
        h.insert(header::ERROR_CLASS, self.error_class.as_str());
        h.insert(header::ERROR, one_line(&self.error, 2048).as_str());
        h.insert(header::FIRST_FAILURE, rfc3339(self.first_failure).as_str());
        h.insert(header::LAST_FAILURE, rfc3339(self.last_failure).as_str());
        if let Some(stream) = &self.stream {
            h.insert(header::STREAM, stream.as_str());
        }
        if let Some(seq) = self.sequence {
            h.insert(header::SEQUENCE, seq.to_string().as_str());
        }
        h.insert(header::TRACE_ID, self.trace_id.as_str());
        h.insert(header::REPLAY, self.replay.to_string().as_str());
        // A redelivered event that is dead-lettered again after a host crash
        // carries the same id, so the DLQ stream keeps one entry.
        let id = super::key::outgoing_msg_id(
            &format!("dlq:{}:{}", self.key, self.replay),
            &self.plugin,
            0,
        );
        h.insert(MSG_ID_HEADER, id.as_str());
        (dlq_subject(&self.plugin), h, self.payload.clone())
    }

    /// Parse a stored DLQ message back.
    pub fn from_message(headers: Option<&HeaderMap>, payload: Bytes) -> DeadLetter {
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        let time = |name: &str| {
            humantime::parse_rfc3339_weak(&get(name)).unwrap_or(SystemTime::UNIX_EPOCH)
        };
        let mut original = Vec::new();
        if let Some(h) = headers {
            for (name, values) in h.iter() {
                let name = name.to_string();
                for value in values {
                    if name == header::ORIGINAL_MSG_ID {
                        original.push((MSG_ID_HEADER.to_string(), value.as_str().to_string()));
                    } else if !name.starts_with("Sluice-")
                        && !name.eq_ignore_ascii_case(MSG_ID_HEADER)
                    {
                        original.push((name.clone(), value.as_str().to_string()));
                    }
                }
            }
        }
        DeadLetter {
            plugin: get(header::PLUGIN),
            version: get(header::VERSION),
            subject: get(header::SUBJECT),
            headers: original,
            payload,
            stream: Some(get(header::STREAM)).filter(|s| !s.is_empty()),
            sequence: get(header::SEQUENCE).parse().ok(),
            attempts: get(header::ATTEMPTS).parse().unwrap_or(0),
            error_class: get(header::ERROR_CLASS),
            error: get(header::ERROR),
            key: get(header::KEY),
            first_failure: time(header::FIRST_FAILURE),
            last_failure: time(header::LAST_FAILURE),
            trace_id: get(header::TRACE_ID),
            replay: get(header::REPLAY).parse().unwrap_or(0),
        }
    }

    /// The message that replays this entry: original subject, payload and
    /// headers, the original key pinned in `Sluice-Idempotency-Key` for the
    /// plugin named in `Sluice-Replay-Plugin` (with the original
    /// `Nats-Msg-Id` and stream position for the subject's other plugins), and a
    /// fresh `Nats-Msg-Id` so the source stream's duplicate window does not
    /// drop it.
    pub fn replay_message(&self) -> (String, HeaderMap, Bytes) {
        let mut h = HeaderMap::new();
        for (name, value) in &self.headers {
            if !name.eq_ignore_ascii_case(MSG_ID_HEADER) {
                h.append(name.as_str(), value.as_str());
            }
        }
        let replay = self.replay + 1;
        h.insert(REPLAY_KEY_HEADER, self.key.as_str());
        // The pin is for this plugin only; every other consumer of the
        // subject derives its key from the original event (see
        // `key::derive_key_for`), which these headers describe.
        h.insert(REPLAY_PLUGIN_HEADER, self.plugin.as_str());
        if let Some((_, id)) = self
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(MSG_ID_HEADER))
        {
            h.insert(header::ORIGINAL_MSG_ID, id.as_str());
        }
        if let (Some(stream), Some(seq)) = (&self.stream, self.sequence) {
            h.insert(header::STREAM, stream.as_str());
            h.insert(header::SEQUENCE, seq.to_string().as_str());
        }
        h.insert(header::REPLAY, replay.to_string().as_str());
        h.insert(
            MSG_ID_HEADER,
            format!("{}:replay:{replay}", self.key).as_str(),
        );
        (self.subject.clone(), h, self.payload.clone())
    }

    /// Milliseconds of the last failure since the Unix epoch (for sorting).
    pub fn last_failure_ms(&self) -> u64 {
        epoch_ms(self.last_failure)
    }
}

/// Create the DLQ stream with `replicas` replicas if it does not exist (an
/// existing stream is used as it is).
pub async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<stream::Stream, DlqError> {
    js.get_or_create_stream(stream::Config {
        name: name.to_string(),
        description: Some("sluice dead-letter queue: events the host gave up on".into()),
        subjects: vec![format!("{DLQ_SUBJECT_PREFIX}.>")],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(30 * 24 * 3600),
        duplicate_window: Duration::from_secs(120),
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| DlqError::Stream {
        stream: name.to_string(),
        message: e.to_string(),
    })
}

/// Publish a dead letter and wait for JetStream's acknowledgement.
pub async fn publish(js: &jetstream::Context, letter: &DeadLetter) -> Result<(), DlqError> {
    let (subject, headers, payload) = letter.to_message();
    let fail = |message: String| DlqError::Publish {
        subject: subject.clone(),
        message,
    };
    let ack = js
        .publish_with_headers(subject.clone(), headers, payload)
        .await
        .map_err(|e| fail(e.to_string()))?;
    ack.await.map(drop).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> DeadLetter {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        DeadLetter {
            plugin: "enrich".into(),
            version: "abc123".into(),
            subject: "orders.created".into(),
            headers: vec![
                ("Nats-Msg-Id".into(), "m-1".into()),
                ("x-tag".into(), "a".into()),
                ("x-tag".into(), "b".into()),
            ],
            payload: Bytes::from_static(&[0, 159, 146, 150]),
            stream: Some("ORDERS".into()),
            sequence: Some(42),
            attempts: 5,
            error_class: "retryable".into(),
            error: "downstream\nunavailable".into(),
            key: "m-1".into(),
            first_failure: t0,
            last_failure: t0 + Duration::from_secs(3),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            replay: 0,
        }
    }

    #[test]
    fn a_dead_letter_round_trips_through_its_message() {
        let original = letter();
        let (subject, headers, payload) = original.to_message();
        assert_eq!(subject, "sluice.dlq.enrich");
        assert_eq!(
            headers.get(header::ERROR).unwrap().as_str(),
            "downstream unavailable"
        );
        assert!(
            headers
                .get(MSG_ID_HEADER)
                .unwrap()
                .as_str()
                .starts_with("sluice-")
        );
        let mut parsed = DeadLetter::from_message(Some(&headers), payload);
        assert_eq!(parsed.error, "downstream unavailable");
        // A HeaderMap keeps the order of values per name, not across names.
        let mut expected = original.clone();
        expected.headers.sort_by(|a, b| a.0.cmp(&b.0));
        parsed.headers.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            DeadLetter {
                error: original.error.clone(),
                ..parsed
            },
            expected
        );
    }

    #[test]
    fn a_replay_counts_as_one_only_for_the_plugin_it_is_addressed_to() {
        let (_, headers, _) = letter().replay_message();
        assert_eq!(replay_count_for("enrich", Some(&headers)), 1);
        assert_eq!(replay_count_for("audit", Some(&headers)), 0);
        let mut old = HeaderMap::new();
        old.insert(header::REPLAY, "2");
        assert_eq!(
            replay_count_for("audit", Some(&old)),
            2,
            "no target: as before"
        );
        assert_eq!(replay_count_for("audit", None), 0);
    }

    #[test]
    fn replay_pins_the_key_and_renews_the_msg_id() {
        let (subject, headers, payload) = letter().replay_message();
        assert_eq!(subject, "orders.created");
        assert_eq!(payload, Bytes::from_static(&[0, 159, 146, 150]));
        assert_eq!(headers.get(REPLAY_KEY_HEADER).unwrap().as_str(), "m-1");
        assert_eq!(headers.get(header::REPLAY).unwrap().as_str(), "1");
        assert_eq!(headers.get(MSG_ID_HEADER).unwrap().as_str(), "m-1:replay:1");
        // The pin names its plugin; the others see where the original was.
        assert_eq!(
            headers.get(REPLAY_PLUGIN_HEADER).unwrap().as_str(),
            "enrich"
        );
        assert_eq!(
            headers.get(header::ORIGINAL_MSG_ID).unwrap().as_str(),
            "m-1"
        );
        assert_eq!(headers.get(header::STREAM).unwrap().as_str(), "ORDERS");
        assert_eq!(headers.get(header::SEQUENCE).unwrap().as_str(), "42");
        let tags: Vec<&str> = headers.get_all("x-tag").map(|v| v.as_str()).collect();
        assert_eq!(tags, ["a", "b"]);
    }
}
