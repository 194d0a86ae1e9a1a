//! Idempotency keys and outgoing message ids.
//!
//! The key identifies one logical event across retries and redeliveries: the
//! publisher's `Nats-Msg-Id` when it set one, else (core NATS) a hash of the
//! subject and payload. Outgoing publishes get an id derived from the key, the
//! plugin and the publish index, so a retried event that publishes again is
//! dropped by JetStream's duplicate window downstream.

use sha2::{Digest, Sha256};

use crate::manifest::KeySource;

/// The header NATS and JetStream use for message deduplication.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header set by `sluice dlq replay`: the original event's key, which wins
/// over every other source so a replayed event keeps its identity.
pub const REPLAY_KEY_HEADER: &str = "Sluice-Idempotency-Key";

/// What the key is derived from, for one event.
pub struct KeyInput<'a> {
    /// The event's subject.
    pub subject: &'a str,
    /// The payload.
    pub payload: &'a [u8],
    /// Header lookup: first value of a header name.
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// JetStream stream and sequence, when consumed from a stream.
    pub stream_seq: Option<(&'a str, u64)>,
    /// The manifest's key source override.
    pub source: Option<&'a KeySource>,
    /// Headers folded into the content hash (core NATS).
    pub hash_headers: &'a [String],
}

/// Derive the idempotency key. Order: the replay header, the manifest's
/// override (header or JSON pointer; falls back when absent), `Nats-Msg-Id`,
/// JetStream `stream:sequence`, else a content hash of subject, payload and
/// the selected headers.
pub fn derive_key(input: &KeyInput<'_>) -> String {
    if let Some(key) = (input.header)(REPLAY_KEY_HEADER).filter(|k| !k.is_empty()) {
        return key;
    }
    match input.source {
        Some(KeySource::Header(name)) => {
            if let Some(value) = (input.header)(name).filter(|v| !v.is_empty()) {
                return value;
            }
        }
        Some(KeySource::JsonPointer(pointer)) => {
            if let Some(value) = json_key(input.payload, pointer) {
                return value;
            }
        }
        None => {}
    }
    if let Some(id) = (input.header)(MSG_ID_HEADER).filter(|id| !id.is_empty()) {
        return id;
    }
    if let Some((stream, seq)) = input.stream_seq {
        return format!("{stream}:{seq}");
    }
    content_hash(
        input.subject,
        input.payload,
        input
            .hash_headers
            .iter()
            .map(|h| (h.as_str(), (input.header)(h))),
    )
}

fn json_key(payload: &[u8], pointer: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match value.pointer(pointer)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Null => None,
        other @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => {
            Some(other.to_string())
        }
        _ => None,
    }
}

fn content_hash<'a>(
    subject: &str,
    payload: &[u8],
    headers: impl Iterator<Item = (&'a str, Option<String>)>,
) -> String {
    let mut hash = Sha256::new();
    hash.update((subject.len() as u64).to_be_bytes());
    hash.update(subject.as_bytes());
    hash.update((payload.len() as u64).to_be_bytes());
    hash.update(payload);
    for (name, value) in headers {
        let value = value.unwrap_or_default();
        for part in [name.as_bytes(), value.as_bytes()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
    }
    format!("sha256:{}", hex::encode(&hash.finalize()[..16]))
}

/// The `Nats-Msg-Id` for the `index`-th publish (0-based) of `plugin` while
/// handling the event with `key`.
pub fn outgoing_msg_id(key: &str, plugin: &str, index: usize) -> String {
    let mut hash = Sha256::new();
    for part in [key.as_bytes(), plugin.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update((index as u64).to_be_bytes());
    format!("sluice-{}", hex::encode(&hash.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of a core message with an optional `Nats-Msg-Id`.
    fn core_key(msg_id: Option<&str>, subject: &str, payload: &[u8]) -> String {
        let lookup = |name: &str| {
            (name == MSG_ID_HEADER)
                .then(|| msg_id.map(str::to_string))
                .flatten()
        };
        derive_key(&KeyInput {
            subject,
            payload,
            header: &lookup,
            stream_seq: None,
            source: None,
            hash_headers: &[],
        })
    }

    #[test]
    fn msg_id_header_wins_over_content_hash() {
        assert_eq!(core_key(Some("order-7"), "s", b"x"), "order-7");
        assert_eq!(core_key(Some(""), "s", b"x"), core_key(None, "s", b"x"));
    }

    #[test]
    fn content_hash_depends_on_subject_and_payload_boundaries() {
        let a = core_key(None, "a", b"bc");
        let b = core_key(None, "ab", b"c");
        assert_ne!(a, b);
        assert_eq!(a, core_key(None, "a", b"bc"));
        assert!(a.starts_with("sha256:"));
    }

    fn key(
        headers: &[(&str, &str)],
        payload: &[u8],
        js: Option<(&str, u64)>,
        source: Option<KeySource>,
        hash: &[&str],
    ) -> String {
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        };
        let hash: Vec<String> = hash.iter().map(|h| h.to_string()).collect();
        derive_key(&KeyInput {
            subject: "s",
            payload,
            header: &lookup,
            stream_seq: js,
            source: source.as_ref(),
            hash_headers: &hash,
        })
    }

    #[test]
    fn key_sources_follow_the_documented_order() {
        let json = br#"{"order":{"id":"o-1","n":7}}"#;
        assert_eq!(
            key(
                &[("Sluice-Idempotency-Key", "orig"), ("Nats-Msg-Id", "m")],
                json,
                Some(("S", 3)),
                None,
                &[]
            ),
            "orig"
        );
        assert_eq!(
            key(
                &[("x-id", "h1"), ("Nats-Msg-Id", "m")],
                json,
                None,
                Some(KeySource::Header("x-id".into())),
                &[]
            ),
            "h1"
        );
        assert_eq!(
            key(
                &[],
                json,
                None,
                Some(KeySource::JsonPointer("/order/id".into())),
                &[]
            ),
            "o-1"
        );
        assert_eq!(
            key(
                &[],
                json,
                None,
                Some(KeySource::JsonPointer("/order/n".into())),
                &[]
            ),
            "7"
        );
        // Override absent: fall back to Nats-Msg-Id, then stream:seq, then the hash.
        assert_eq!(
            key(
                &[("Nats-Msg-Id", "m")],
                json,
                Some(("S", 3)),
                Some(KeySource::Header("x-id".into())),
                &[]
            ),
            "m"
        );
        assert_eq!(
            key(
                &[],
                b"not json",
                Some(("ORDERS", 42)),
                Some(KeySource::JsonPointer("/id".into())),
                &[]
            ),
            "ORDERS:42"
        );
        assert!(key(&[], b"x", None, None, &[]).starts_with("sha256:"));
    }

    #[test]
    fn selected_headers_change_the_content_hash() {
        let a = key(&[("x-tenant", "a")], b"p", None, None, &["x-tenant"]);
        let b = key(&[("x-tenant", "b")], b"p", None, None, &["x-tenant"]);
        let ignored = key(&[("x-tenant", "b")], b"p", None, None, &[]);
        assert_ne!(a, b);
        assert_eq!(ignored, key(&[("x-tenant", "a")], b"p", None, None, &[]));
    }

    #[test]
    fn outgoing_ids_are_deterministic_and_distinct() {
        let id = outgoing_msg_id("k", "enrich", 0);
        assert_eq!(id, outgoing_msg_id("k", "enrich", 0));
        assert_ne!(id, outgoing_msg_id("k", "enrich", 1));
        assert_ne!(id, outgoing_msg_id("k", "echo", 0));
        assert_ne!(id, outgoing_msg_id("k2", "enrich", 0));
    }
}
