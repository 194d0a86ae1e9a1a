//! W3C Trace Context (`traceparent`) across the host.
//!
//! An event that arrives with a `traceparent` header keeps its trace: the
//! event's span (and so every log record the plugin writes while handling it)
//! carries the trace id, and every message the plugin publishes gets a
//! `traceparent` with the same trace id and a new span id, so a tracing
//! backend links the derived events to the one that caused them. The host
//! does not export spans itself; it only carries the context along.

use async_nats::HeaderMap;

use crate::contract;

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header name (vendor data, passed on unchanged).
pub const TRACESTATE: &str = "tracestate";

/// A parsed, valid `traceparent` (version 00 layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits of the caller's span.
    pub parent_id: String,
    /// Trace flags (2 hex digits; `01` = sampled).
    pub flags: String,
}

impl TraceParent {
    /// Parse a header value; `None` if it is not a valid traceparent.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
        let nonzero = |s: &str| s.chars().any(|c| c != '0');
        let [version, trace_id, parent_id, flags, ..] = parts[..] else {
            return None;
        };
        let valid = hex(version, 2)
            && !version.eq_ignore_ascii_case("ff")
            && (parts.len() == 4 || version != "00")
            && hex(trace_id, 32)
            && nonzero(trace_id)
            && hex(parent_id, 16)
            && nonzero(parent_id)
            && hex(flags, 2);
        valid.then(|| TraceParent {
            trace_id: trace_id.to_ascii_lowercase(),
            parent_id: parent_id.to_ascii_lowercase(),
            flags: flags.to_ascii_lowercase(),
        })
    }

    /// The `traceparent` of the event's headers, if present and valid.
    pub fn of_event(event: &contract::Event) -> Option<TraceParent> {
        header(event, TRACEPARENT).and_then(TraceParent::parse)
    }

    /// A child context: same trace id and flags, a fresh span id.
    pub fn child(&self) -> String {
        let mut span = [0u8; 8];
        while span == [0u8; 8] {
            span = rand::random();
        }
        format!("00-{}-{}-{}", self.trace_id, hex::encode(span), self.flags)
    }
}

/// The trace context to put on an event's outbox messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Propagation {
    parent: Option<TraceParent>,
    state: Option<String>,
}

impl Propagation {
    /// What `event` carries (nothing if it has no valid `traceparent`).
    pub fn of_event(event: &contract::Event) -> Propagation {
        let parent = TraceParent::of_event(event);
        let state = parent
            .as_ref()
            .and_then(|_| header(event, TRACESTATE))
            .map(str::to_string);
        Propagation { parent, state }
    }

    /// Add `traceparent` (a child span) and `tracestate` to an outgoing
    /// message's headers, unless the plugin set its own `traceparent`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let Some(parent) = &self.parent else {
            return;
        };
        if headers.get(TRACEPARENT).is_some() {
            return;
        }
        headers.insert(TRACEPARENT, parent.child().as_str());
        if let Some(state) = &self.state
            && headers.get(TRACESTATE).is_none()
        {
            headers.insert(TRACESTATE, state.as_str());
        }
    }
}

fn header<'e>(event: &'e contract::Event, name: &str) -> Option<&'e str> {
    event
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_valid_and_rejects_invalid_traceparents() {
        let tp = TraceParent::parse(TP).unwrap();
        assert_eq!(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id, "00f067aa0ba902b7");
        assert_eq!(tp.flags, "01");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_span() {
        let tp = TraceParent::parse(TP).unwrap();
        let child = TraceParent::parse(&tp.child()).unwrap();
        assert_eq!(child.trace_id, tp.trace_id);
        assert_eq!(child.flags, tp.flags);
        assert_ne!(child.parent_id, tp.parent_id);
    }

    #[test]
    fn propagation_respects_a_plugin_set_traceparent() {
        let event = contract::Event {
            subject: "s".into(),
            payload: vec![],
            headers: vec![
                contract::Header {
                    name: "traceparent".into(),
                    value: TP.into(),
                },
                contract::Header {
                    name: "tracestate".into(),
                    value: "vendor=1".into(),
                },
            ],
            idempotency_key: "k".into(),
            attempt: 1,
            delivery: contract::Delivery {
                stream: None,
                sequence: None,
                published_at_ms: None,
                reply_to: None,
            },
        };
        let p = Propagation::of_event(&event);
        let mut h = HeaderMap::new();
        p.apply(&mut h);
        let sent = TraceParent::parse(h.get(TRACEPARENT).unwrap().as_str()).unwrap();
        assert_eq!(sent.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h.get(TRACESTATE).unwrap().as_str(), "vendor=1");
        let mut own = HeaderMap::new();
        own.insert(
            TRACEPARENT,
            "00-11111111111111111111111111111111-2222222222222222-00",
        );
        p.apply(&mut own);
        assert_eq!(
            own.get(TRACEPARENT).unwrap().as_str(),
            "00-11111111111111111111111111111111-2222222222222222-00"
        );
        let none = Propagation::default();
        let mut h = HeaderMap::new();
        none.apply(&mut h);
        assert!(h.get(TRACEPARENT).is_none());
    }
}
