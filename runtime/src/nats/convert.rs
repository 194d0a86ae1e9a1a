//! Converting between NATS messages and the plugin's view of an event.

use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};

use crate::contract;
use crate::delivery::key::{MSG_ID_HEADER, outgoing_msg_id};
use crate::host::{OutboundMessage, PluginTag};

/// Build the plugin event for a core NATS message whose idempotency key the
/// dispatcher already derived (see `delivery::key::derive_key`).
pub fn core_event(message: &async_nats::Message, key: &str, attempt: u32) -> contract::Event {
    let headers = headers_to_vec(message.headers.as_ref());
    let received_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .ok();
    contract::Event {
        // `as_str`, not `to_string`: a `Subject` formats through `Display`.
        subject: message.subject.as_str().to_owned(),
        payload: message.payload.to_vec(),
        idempotency_key: key.to_string(),
        headers,
        attempt,
        delivery: contract::Delivery {
            stream: None,
            sequence: None,
            published_at_ms: received_ms,
            reply_to: message.reply.as_ref().map(|r| r.as_str().to_owned()),
        },
    }
}

/// The first value of header `name`, if the message has it.
pub fn first_header(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

/// All header (name, value) pairs, in order, repeated names kept.
pub fn headers_to_vec(headers: Option<&HeaderMap>) -> Vec<contract::Header> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, values) in headers.iter() {
        for value in values {
            out.push(contract::Header {
                name: name.to_string(),
                value: value.as_str().to_string(),
            });
        }
    }
    out
}

/// Header naming the plugin that published a message (set by the host).
pub const PLUGIN_HEADER: &str = "Sluice-Plugin";
/// Header naming the plugin version that published a message (set by the host).
pub const VERSION_HEADER: &str = "Sluice-Plugin-Version";

/// Whether the host owns header `name` on outgoing messages: every `Nats-*`
/// header and every `Sluice-*` header. A plugin cannot set these; see
/// [`outgoing_headers`].
///
/// `Nats-*` is the server's namespace: besides `Nats-Msg-Id` (the outbox ids
/// that make retries safe) it holds headers that make JetStream act on the
/// stream, not just store the message: `Nats-Rollup` purges a subject or the
/// whole stream, `Nats-Expected-*` makes the publish fail (a plugin could
/// fail every retry of its own outbox on purpose), `Nats-TTL` makes the
/// message expire. None of them is a plugin's to choose in a stream the host
/// publishes to on its behalf. `Sluice-*` is the host's own context (plugin
/// name and version, the replay pin).
pub fn host_owned_header(name: &str) -> bool {
    has_prefix_ignoring_case(name, NATS_PREFIX) || has_prefix_ignoring_case(name, SLUICE_PREFIX)
}

fn has_prefix_ignoring_case(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

const SLUICE_PREFIX: &str = "Sluice-";
const NATS_PREFIX: &str = "Nats-";

/// Headers for the `index`-th outbox message of plugin `tag` handling `key`.
///
/// The host owns every `Nats-*` and `Sluice-*` header: whatever the
/// plugin set under those names is dropped (not refused, so a plugin that
/// forwards its event's headers keeps working), and the host sets its own.
/// `Nats-Msg-Id` is always derived from the event's key, the plugin and the
/// publish index, so a retried event publishes the same ids and no plugin
/// can choose an id: none can make its retries publish twice, collapse its
/// messages into one, or pre-empt another plugin's message in a shared
/// stream.
pub fn outgoing_headers(
    message: &OutboundMessage,
    key: &str,
    tag: &PluginTag,
    index: usize,
) -> HeaderMap {
    let plugin: &str = &tag.name;
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        if host_owned_header(name) {
            continue;
        }
        // Names and values were validated when the plugin published.
        if let (Ok(name), Ok(value)) = (name.parse::<HeaderName>(), value.parse::<HeaderValue>()) {
            headers.append(name, value);
        }
    }
    headers.insert(MSG_ID_HEADER, outgoing_msg_id(key, plugin, index).as_str());
    headers.insert(PLUGIN_HEADER, plugin);
    headers.insert(VERSION_HEADER, &*tag.version);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn headers_of(plugin_headers: &[(&str, &str)], index: usize) -> HeaderMap {
        let message = OutboundMessage {
            subject: "out.a".into(),
            payload: Bytes::new(),
            headers: plugin_headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        };
        let tag = PluginTag {
            name: "forger".into(),
            version: "v1".into(),
        };
        outgoing_headers(&message, "event-key", &tag, index)
    }

    #[test]
    fn the_host_owns_msg_id_and_every_sluice_header() {
        let h = headers_of(
            &[
                ("nats-msg-id", "chosen-by-plugin"),
                ("Sluice-Idempotency-Key", "k"),
                ("sluice-replay-plugin", "other"),
                ("SLUICE-PLUGIN", "someone-else"),
                ("x-kept", "yes"),
            ],
            0,
        );
        let id = h.get(MSG_ID_HEADER).unwrap().as_str();
        assert_eq!(id, outgoing_msg_id("event-key", "forger", 0));
        assert_eq!(h.get_all(MSG_ID_HEADER).count(), 1);
        assert!(h.get("Sluice-Idempotency-Key").is_none());
        assert!(h.get("sluice-replay-plugin").is_none());
        assert_eq!(h.get(PLUGIN_HEADER).unwrap().as_str(), "forger");
        assert_eq!(h.get_all(PLUGIN_HEADER).count(), 1);
        assert_eq!(h.get(VERSION_HEADER).unwrap().as_str(), "v1");
        assert_eq!(h.get("x-kept").unwrap().as_str(), "yes");
    }

    #[test]
    fn the_same_forged_id_on_two_publishes_still_gives_two_ids() {
        let forged = [("Nats-Msg-Id", "same")];
        assert_ne!(
            headers_of(&forged, 0).get(MSG_ID_HEADER),
            headers_of(&forged, 1).get(MSG_ID_HEADER)
        );
        assert_eq!(
            headers_of(&forged, 3).get(MSG_ID_HEADER).unwrap().as_str(),
            outgoing_msg_id("event-key", "forger", 3)
        );
    }

    #[test]
    fn host_owned_names_are_matched_without_case() {
        for name in [
            "Nats-Msg-Id",
            "NATS-MSG-ID",
            "Nats-Rollup",
            "nats-expected-last-sequence",
            "Nats-Expected-Stream",
            "Nats-TTL",
            "Sluice-X",
            "sluice-",
            "SLUICE-Plugin",
        ] {
            assert!(host_owned_header(name), "{name}");
        }
        for name in [
            "Sluice",
            "X-Sluice-A",
            "Nats",
            "X-Nats-Rollup",
            "traceparent",
            "é",
        ] {
            assert!(!host_owned_header(name), "{name}");
        }
    }
}
