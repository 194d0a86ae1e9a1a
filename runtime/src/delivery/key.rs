//! Idempotency keys and outgoing message ids.
//!
//! The key identifies one logical event across retries and redeliveries: the
//! publisher's `Nats-Msg-Id` when it set one, else (core NATS) a hash of the
//! subject and payload. Outgoing publishes get an id derived from the key, the
//! plugin and the publish index, so a retried event that publishes again is
//! dropped by JetStream's duplicate window downstream.

use sha2::{Digest, Sha256};

/// The header NATS and JetStream use for message deduplication.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The key for a core NATS event: `Nats-Msg-Id` if present, else
/// `sha256:<hex>` over subject and payload (length-prefixed, so `a`+`bc` and
/// `ab`+`c` differ).
pub fn idempotency_key(msg_id: Option<&str>, subject: &str, payload: &[u8]) -> String {
    if let Some(id) = msg_id.filter(|id| !id.is_empty()) {
        return id.to_string();
    }
    let mut hash = Sha256::new();
    hash.update((subject.len() as u64).to_be_bytes());
    hash.update(subject.as_bytes());
    hash.update((payload.len() as u64).to_be_bytes());
    hash.update(payload);
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

    #[test]
    fn msg_id_header_wins_over_content_hash() {
        assert_eq!(idempotency_key(Some("order-7"), "s", b"x"), "order-7");
        assert_eq!(
            idempotency_key(Some(""), "s", b"x"),
            idempotency_key(None, "s", b"x")
        );
    }

    #[test]
    fn content_hash_depends_on_subject_and_payload_boundaries() {
        let a = idempotency_key(None, "a", b"bc");
        let b = idempotency_key(None, "ab", b"c");
        assert_ne!(a, b);
        assert_eq!(a, idempotency_key(None, "a", b"bc"));
        assert!(a.starts_with("sha256:"));
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
