//! Idempotency keys and outgoing message ids.
//!
//! The key identifies one logical event across retries and redeliveries.
//! Its sources, in order: the key pinned by `sluice dlq replay`; the
//! manifest's `idempotency.key` (a header, a JSON pointer, or an opt-in
//! content hash); the publisher's `Nats-Msg-Id`; for JetStream, the stream's
//! identity (name and creation time) and the sequence; else, for core NATS, a
//! key unique to the received message.
//!
//! Core NATS never redelivers, so two identical core messages without an id
//! are two events (a sensor repeating a reading, a command sent twice on
//! purpose, two identical requests with different reply subjects): hashing
//! their content by default would skip the second for the whole dedup TTL.
//! A per-message key has nothing to deduplicate against, so the host skips
//! the dedup store for it ([`Key::per_message`]).
//!
//! A JetStream key names the stream's creation time, not only its name: a
//! stream deleted and created again restarts its sequences, and `NAME:1` of
//! the new stream must not meet the completed record of the old one.
//!
//! Outgoing publishes get an id derived from the key, the plugin and the
//! publish index, so a retried event that publishes again is dropped by
//! JetStream's duplicate window downstream.

use sha2::{Digest, Sha256};

use crate::manifest::KeySource;

/// The header NATS and JetStream use for message deduplication.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header set by `sluice dlq replay`: the original event's key, which wins
/// over every other source so a replayed event keeps its identity.
pub const REPLAY_KEY_HEADER: &str = "Sluice-Idempotency-Key";
/// Header set by `sluice dlq replay` beside [`REPLAY_KEY_HEADER`]: the plugin
/// that dead-lettered the event, the only one the pinned key is meant for.
pub const REPLAY_PLUGIN_HEADER: &str = "Sluice-Replay-Plugin";

/// Where a JetStream message sits.
#[derive(Debug, Clone, Copy)]
pub struct StreamPosition<'a> {
    /// Stream name.
    pub stream: &'a str,
    /// The stream's creation time (ms since the Unix epoch): its identity.
    pub created_ms: u64,
    /// Stream sequence.
    pub sequence: u64,
}

impl StreamPosition<'_> {
    /// The key of the message at this position (when nothing else names it):
    /// `stream@created_ms:sequence`. Written by hand: through `format!` this
    /// was a twentieth of a JetStream host's time.
    pub fn key(&self) -> String {
        let mut digits = [0u8; 20];
        let mut out = String::with_capacity(self.stream.len() + 42);
        out.push_str(self.stream);
        out.push('@');
        out.push_str(decimal(self.created_ms, &mut digits));
        out.push(':');
        out.push_str(decimal(self.sequence, &mut digits));
        out
    }

    /// Whether `key` is exactly [`StreamPosition::key`], without making it.
    pub fn is_key(&self, key: &str) -> bool {
        let mut digits = [0u8; 20];
        let Some(rest) = key
            .strip_prefix(self.stream)
            .and_then(|rest| rest.strip_prefix('@'))
        else {
            return false;
        };
        let Some(rest) = rest.strip_prefix(decimal(self.created_ms, &mut digits)) else {
            return false;
        };
        rest.strip_prefix(':') == Some(decimal(self.sequence, &mut digits))
    }
}

/// `n` in decimal digits, written into `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).expect("ASCII digits")
}

/// What the key is derived from, for one event.
pub struct KeyInput<'a> {
    /// The event's subject.
    pub subject: &'a str,
    /// The reply subject of a core request.
    pub reply: Option<&'a str>,
    /// The payload.
    pub payload: &'a [u8],
    /// Header lookup: first value of a header name.
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// JetStream position, when consumed from a stream.
    pub position: Option<StreamPosition<'a>>,
    /// The manifest's key source override.
    pub source: Option<&'a KeySource>,
    /// Headers folded into the content hash.
    pub hash_headers: &'a [String],
}

/// An event's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The key the plugin sees and dedup records use.
    pub value: String,
    /// Unique to this received message (core NATS, no other source): no
    /// other delivery can share it, so there is nothing to deduplicate.
    pub per_message: bool,
}

impl Key {
    fn shared(value: String) -> Key {
        Key {
            value,
            per_message: false,
        }
    }
}

/// Derive the idempotency key (see the module docs for the order) without
/// knowing which plugin asks: a key pinned by a replay wins for everyone.
/// Kept for callers that have no plugin at hand; see [`derive_key_for`].
pub fn derive_key(input: &KeyInput<'_>) -> Key {
    if let Some(key) = (input.header)(REPLAY_KEY_HEADER).filter(|k| !k.is_empty()) {
        return Key::shared(key);
    }
    derive_unpinned(input)
}

/// Derive `plugin`'s idempotency key: as [`derive_key`], except that a key
/// pinned by `sluice dlq replay` is honoured only by the plugin named in
/// [`REPLAY_PLUGIN_HEADER`] (or by every plugin when a replay names none,
/// as replays made before that header did).
///
/// The triggers skip a replay addressed to another plugin by name before
/// deriving a key (`trigger::skip_replay_for_another_plugin`); this
/// derivation is what such a replay would mean for another plugin if it were
/// handled. A replay addressed to another plugin is, for this one, the
/// original event again: its key is derived from the original's `Nats-Msg-Id` and stream
/// sequence (carried by the replay in `Sluice-Original-Msg-Id` and
/// `Sluice-Sequence`, with `Sluice-Stream`) instead of the replay's own, so
/// this plugin finds the key it already completed and skips the replay
/// rather than running it again with a new key and new outbox ids. When the
/// original key cannot be rebuilt (a core event without `Nats-Msg-Id` or a
/// manifest key: its key was unique to that message; or the dead-lettering
/// plugin read the subject on core NATS and this one from a stream), this
/// plugin gets a new key and runs the replay again.
pub fn derive_key_for(plugin: &str, input: &KeyInput<'_>) -> Key {
    use super::dead_letter::header::{ORIGINAL_MSG_ID, SEQUENCE, STREAM};
    let Some(pinned) = (input.header)(REPLAY_KEY_HEADER).filter(|k| !k.is_empty()) else {
        return derive_unpinned(input);
    };
    match (input.header)(REPLAY_PLUGIN_HEADER) {
        Some(target) if target != plugin => {
            let original = |name: &str| {
                if name.eq_ignore_ascii_case(MSG_ID_HEADER) {
                    (input.header)(ORIGINAL_MSG_ID)
                } else {
                    (input.header)(name)
                }
            };
            let original_seq = (input.header)(SEQUENCE).and_then(|s| s.parse().ok());
            let original_stream = (input.header)(STREAM);
            let position = match (input.position, original_seq) {
                (Some(p), Some(sequence)) if original_stream.as_deref() == Some(p.stream) => {
                    Some(StreamPosition { sequence, ..p })
                }
                (position, _) => position,
            };
            derive_unpinned(&KeyInput {
                header: &original,
                position,
                ..*input
            })
        }
        _ => Key::shared(pinned),
    }
}

fn derive_unpinned(input: &KeyInput<'_>) -> Key {
    match input.source {
        Some(KeySource::Header(name)) => {
            if let Some(value) = (input.header)(name).filter(|v| !v.is_empty()) {
                return Key::shared(value);
            }
        }
        Some(KeySource::JsonPointer(pointer)) => {
            if let Some(value) = json_key(input.payload, pointer) {
                return Key::shared(value);
            }
        }
        Some(KeySource::ContentHash) => {
            return Key::shared(content_hash(
                input.subject,
                input.reply,
                input.payload,
                input
                    .hash_headers
                    .iter()
                    .map(|h| (h.as_str(), (input.header)(h))),
            ));
        }
        None => {}
    }
    if let Some(id) = (input.header)(MSG_ID_HEADER).filter(|id| !id.is_empty()) {
        return Key::shared(id);
    }
    if let Some(p) = input.position {
        return Key::shared(p.key());
    }
    Key {
        value: hex_id_after("msg-", rand::random::<u128>()),
        per_message: true,
    }
}

/// `id` as 32 lower-case hex digits, what `{:032x}` writes, for less work:
/// every event without a key of its own (or a `traceparent`) gets one.
pub(crate) fn hex_id(id: u128) -> String {
    hex_id_after("", id)
}

/// `prefix` followed by [`hex_id`] of `id`, in one allocation.
fn hex_id_after(prefix: &str, id: u128) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(prefix.len() + 32);
    out.push_str(prefix);
    let mut digits = [0u8; 32];
    for (i, digit) in digits.iter_mut().enumerate() {
        *digit = DIGITS[((id >> ((31 - i) * 4)) & 0xf) as usize];
    }
    out.push_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
    out
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
    reply: Option<&str>,
    payload: &[u8],
    headers: impl Iterator<Item = (&'a str, Option<String>)>,
) -> String {
    let mut hash = Sha256::new();
    hash.update((subject.len() as u64).to_be_bytes());
    hash.update(subject.as_bytes());
    let reply = reply.unwrap_or_default();
    hash.update((reply.len() as u64).to_be_bytes());
    hash.update(reply.as_bytes());
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

    #[test]
    fn a_position_key_is_stream_at_creation_colon_sequence_and_is_recognised_exactly() {
        for (created_ms, sequence) in [
            (0u64, 0u64),
            (1, 9),
            (1_733_000_000_123, 42),
            (u64::MAX, u64::MAX),
            (10, 100),
        ] {
            let position = StreamPosition {
                stream: "ORDERS",
                created_ms,
                sequence,
            };
            let key = position.key();
            assert_eq!(key, format!("ORDERS@{created_ms}:{sequence}"));
            assert!(position.is_key(&key), "{key}");
        }
        let position = StreamPosition {
            stream: "ORDERS",
            created_ms: 17,
            sequence: 5,
        };
        for other in [
            "ORDERS@17:6",
            "ORDERS@17:50",
            "ORDERS@17:05",
            "ORDERS@017:5",
            "ORDERS@18:5",
            "ORDERS@17:5x",
            "ORDERS@17",
            "ORDERS@17:",
            "ORDERS17:5",
            "ORDERSX@17:5",
            "ORDER@17:5",
            "orders@17:5",
            "",
            "@17:5",
        ] {
            assert!(
                !position.is_key(other),
                "{other} taken for the key of ORDERS@17:5"
            );
        }
    }

    #[test]
    fn a_generated_id_is_the_32_digit_lower_hex_of_its_number() {
        for id in [
            0u128,
            1,
            0xabc,
            u128::MAX,
            0x4bf92f3577b34da6a3ce929d0e0e4736,
            rand::random(),
        ] {
            assert_eq!(hex_id(id), format!("{id:032x}"));
            assert_eq!(hex_id_after("msg-", id), format!("msg-{id:032x}"));
        }
    }

    fn key(
        headers: &[(&str, &str)],
        payload: &[u8],
        position: Option<(&str, u64, u64)>,
        source: Option<KeySource>,
        hash: &[&str],
        reply: Option<&str>,
    ) -> Key {
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_string())
        };
        let hash: Vec<String> = hash.iter().map(|h| h.to_string()).collect();
        derive_key(&KeyInput {
            subject: "s",
            reply,
            payload,
            header: &lookup,
            position: position.map(|(stream, created_ms, sequence)| StreamPosition {
                stream,
                created_ms,
                sequence,
            }),
            source: source.as_ref(),
            hash_headers: &hash,
        })
    }

    fn v(k: Key) -> String {
        k.value
    }

    #[test]
    fn identical_core_messages_without_an_id_are_distinct_events() {
        let a = key(&[], b"21.5", None, None, &[], None);
        let b = key(&[], b"21.5", None, None, &[], None);
        assert!(a.per_message && b.per_message);
        assert_ne!(a.value, b.value);
        // With an id they are one event, and dedup applies.
        let id = key(
            &[("Nats-Msg-Id", "reading-7")],
            b"21.5",
            None,
            None,
            &[],
            None,
        );
        assert_eq!(
            id,
            Key {
                value: "reading-7".into(),
                per_message: false
            }
        );
        assert_eq!(
            v(key(&[("Nats-Msg-Id", "")], b"x", None, None, &[], None)).len(),
            36
        );
    }

    #[test]
    fn content_hash_is_opt_in_and_tells_requests_apart_by_reply_subject() {
        let h = |payload: &[u8], reply| {
            key(&[], payload, None, Some(KeySource::ContentHash), &[], reply)
        };
        let a = h(b"bc", Some("_INBOX.1"));
        assert!(a.value.starts_with("sha256:") && !a.per_message);
        assert_eq!(a, h(b"bc", Some("_INBOX.1")));
        assert_ne!(a, h(b"bc", Some("_INBOX.2")));
        assert_ne!(h(b"bc", None), h(b"bcd", None));
    }

    #[test]
    fn a_recreated_stream_gives_new_keys_to_the_same_sequences() {
        let old = key(&[], b"x", Some(("ORDERS", 1_000, 1)), None, &[], None);
        let new = key(&[], b"x", Some(("ORDERS", 2_000, 1)), None, &[], None);
        assert_eq!(old.value, "ORDERS@1000:1");
        assert_ne!(old, new);
        assert!(!old.per_message);
    }

    #[test]
    fn key_sources_follow_the_documented_order() {
        let json = br#"{"order":{"id":"o-1","n":7}}"#;
        let js = Some(("S", 9, 3));
        assert_eq!(
            v(key(
                &[("Sluice-Idempotency-Key", "orig"), ("Nats-Msg-Id", "m")],
                json,
                js,
                None,
                &[],
                None
            )),
            "orig"
        );
        assert_eq!(
            v(key(
                &[("x-id", "h1"), ("Nats-Msg-Id", "m")],
                json,
                None,
                Some(KeySource::Header("x-id".into())),
                &[],
                None
            )),
            "h1"
        );
        assert_eq!(
            v(key(
                &[],
                json,
                None,
                Some(KeySource::JsonPointer("/order/id".into())),
                &[],
                None
            )),
            "o-1"
        );
        assert_eq!(
            v(key(
                &[],
                json,
                None,
                Some(KeySource::JsonPointer("/order/n".into())),
                &[],
                None
            )),
            "7"
        );
        // Override absent: fall back to Nats-Msg-Id, then the stream position.
        assert_eq!(
            v(key(
                &[("Nats-Msg-Id", "m")],
                json,
                js,
                Some(KeySource::Header("x-id".into())),
                &[],
                None
            )),
            "m"
        );
        assert_eq!(
            v(key(
                &[],
                b"not json",
                Some(("ORDERS", 5, 42)),
                Some(KeySource::JsonPointer("/id".into())),
                &[],
                None
            )),
            "ORDERS@5:42"
        );
    }

    #[test]
    fn selected_headers_change_the_content_hash() {
        let h = |headers: &[(&str, &str)], hash: &[&str]| {
            key(
                headers,
                b"p",
                None,
                Some(KeySource::ContentHash),
                hash,
                None,
            )
        };
        let a = h(&[("x-tenant", "a")], &["x-tenant"]);
        let b = h(&[("x-tenant", "b")], &["x-tenant"]);
        assert_ne!(a, b);
        assert_eq!(h(&[("x-tenant", "b")], &[]), h(&[("x-tenant", "a")], &[]));
    }

    #[test]
    fn a_replay_pins_the_key_only_for_the_plugin_that_dead_lettered_it() {
        let headers = [
            ("Sluice-Idempotency-Key", "order-7"),
            ("Sluice-Replay-Plugin", "billing"),
            ("Nats-Msg-Id", "order-7:replay:1"),
            ("Sluice-Original-Msg-Id", "m-1"),
            ("Sluice-Stream", "ORDERS"),
            ("Sluice-Sequence", "3"),
        ];
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_string())
        };
        let input = |position| KeyInput {
            subject: "s",
            reply: None,
            payload: b"p",
            header: &lookup,
            position,
            source: None,
            hash_headers: &[],
        };
        assert_eq!(v(derive_key_for("billing", &input(None))), "order-7");
        // Another plugin sees the original event: its original id, not the replay's.
        assert_eq!(v(derive_key_for("audit", &input(None))), "m-1");
        let without_id = |name: &str| {
            (!name.eq_ignore_ascii_case("Sluice-Original-Msg-Id")
                && !name.eq_ignore_ascii_case(MSG_ID_HEADER))
            .then(|| lookup(name))
            .flatten()
        };
        let at = |stream| {
            Some(StreamPosition {
                stream,
                created_ms: 5,
                sequence: 9,
            })
        };
        let js = KeyInput {
            header: &without_id,
            ..input(at("ORDERS"))
        };
        assert_eq!(
            v(derive_key_for("audit", &js)),
            "ORDERS@5:3",
            "the original sequence"
        );
        assert_eq!(v(derive_key_for("billing", &js)), "order-7");
        let elsewhere = KeyInput {
            header: &without_id,
            ..input(at("OTHER"))
        };
        assert_eq!(
            v(derive_key_for("audit", &elsewhere)),
            "OTHER@5:9",
            "another stream's sequence is not the original's"
        );
        // A replay naming no plugin (made before the header existed) pins for all.
        let old = |name: &str| {
            (name != REPLAY_PLUGIN_HEADER)
                .then(|| lookup(name))
                .flatten()
        };
        let old_replay = KeyInput {
            header: &old,
            ..input(None)
        };
        assert_eq!(v(derive_key_for("audit", &old_replay)), "order-7");
        assert_eq!(v(derive_key(&input(None))), "order-7");
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
