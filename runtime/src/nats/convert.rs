//! Converting between NATS messages and the plugin's view of an event.

use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};

use crate::delivery::key::{MSG_ID_HEADER, outgoing_msg_id};
use crate::engine::bindings::v0_1::sluice::plugin::types;
use crate::host::{OutboundMessage, PluginTag};

/// Build the plugin event for a core NATS message whose idempotency key the
/// dispatcher already derived (see `delivery::key::derive_key`).
pub fn core_event(message: &async_nats::Message, key: &str, attempt: u32) -> types::Event {
    let headers = headers_to_vec(message.headers.as_ref());
    let received_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .ok();
    types::Event {
        subject: message.subject.to_string(),
        payload: message.payload.to_vec(),
        idempotency_key: key.to_string(),
        headers,
        attempt,
        delivery: types::Delivery {
            stream: None,
            sequence: None,
            published_at_ms: received_ms,
            reply_to: message.reply.as_ref().map(|r| r.to_string()),
        },
    }
}

/// All header (name, value) pairs, in order, repeated names kept.
pub fn headers_to_vec(headers: Option<&HeaderMap>) -> Vec<types::Header> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, values) in headers.iter() {
        for value in values {
            out.push(types::Header {
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

/// Headers for the `index`-th outbox message of plugin `tag` handling `key`:
/// the plugin's headers, a deterministic `Nats-Msg-Id` unless it set one, and
/// the plugin name and version (which the plugin cannot forge).
pub fn outgoing_headers(
    message: &OutboundMessage,
    key: &str,
    tag: &PluginTag,
    index: usize,
) -> HeaderMap {
    let plugin: &str = &tag.name;
    let mut headers = HeaderMap::new();
    let mut has_id = false;
    for (name, value) in &message.headers {
        if name.eq_ignore_ascii_case(PLUGIN_HEADER) || name.eq_ignore_ascii_case(VERSION_HEADER) {
            continue;
        }
        has_id |= name.eq_ignore_ascii_case(MSG_ID_HEADER);
        // Names and values were validated when the plugin published.
        if let (Ok(name), Ok(value)) = (name.parse::<HeaderName>(), value.parse::<HeaderValue>()) {
            headers.append(name, value);
        }
    }
    if !has_id {
        headers.insert(MSG_ID_HEADER, outgoing_msg_id(key, plugin, index).as_str());
    }
    headers.insert(PLUGIN_HEADER, plugin);
    headers.insert(VERSION_HEADER, &*tag.version);
    headers
}
