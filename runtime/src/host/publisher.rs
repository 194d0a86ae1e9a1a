//! The `publisher` import and the outbox behind it.
//!
//! A plugin's publishes are validated at once (grants, limits) but only
//! buffered; the dispatcher sends them after the handler returned `ok`. A
//! failed attempt's outbox is dropped, so a retry never double-publishes.
//!
//! A refused publish returns an error to the plugin, is logged and counted.
//! Reaching a per-event publish limit also fails the attempt (class
//! `publish-limit`) whatever the handler returns afterwards: its outbox is
//! incomplete, and committing part of it would be worse than committing none.

use std::sync::Arc;

use bytes::Bytes;

use crate::contract::PublishError;
use crate::host::HostState;
use crate::subject::{GrantError, PublishGrants};

/// Per-event caps on what a plugin may publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLimits {
    /// Most messages one event may publish.
    pub max_messages: u32,
    /// Most bytes (payload plus subject and headers, summed) one event may
    /// publish; this also bounds the host memory an outbox can hold.
    pub max_bytes: usize,
}

impl Default for PublishLimits {
    fn default() -> Self {
        PublishLimits {
            max_messages: 100,
            max_bytes: 4 << 20,
        }
    }
}

impl OutboundMessage {
    /// Bytes counted against `max_publish_bytes`: payload, subject and headers.
    pub fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.payload.len() + self.subject.len() + headers
    }
}

/// One buffered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Concrete subject.
    pub subject: String,
    /// Payload.
    pub payload: Bytes,
    /// Headers in plugin order.
    pub headers: Vec<(String, String)>,
}

/// Messages buffered by one invocation.
#[derive(Debug)]
pub struct Outbox {
    grants: Arc<PublishGrants>,
    limits: PublishLimits,
    messages: Vec<OutboundMessage>,
    bytes: usize,
    refused: u32,
    limit_reached: Option<String>,
    reply_to: Option<String>,
}

impl Outbox {
    /// An empty outbox enforcing `grants` and `limits`.
    pub fn new(grants: Arc<PublishGrants>, limits: PublishLimits) -> Self {
        Outbox {
            grants,
            limits,
            messages: Vec::new(),
            bytes: 0,
            refused: 0,
            limit_reached: None,
            reply_to: None,
        }
    }

    /// Allow publishing to `reply_to`, the current event's reply subject
    /// (and to no other reserved subject): answering a request needs no
    /// grant, and can reach only the requester.
    pub fn answer_to(&mut self, reply_to: Option<String>) {
        self.reply_to = reply_to.filter(|r| !r.is_empty());
    }

    /// Whether `subject` is the current event's reply subject.
    pub fn is_reply(&self, subject: &str) -> bool {
        self.reply_to.as_deref() == Some(subject)
    }

    /// Validate and buffer one message.
    pub fn push(&mut self, message: OutboundMessage) -> Result<(), PublishError> {
        let refused = |this: &mut Self, e: PublishError| {
            this.refused += 1;
            Err(e)
        };
        match self.grants.check(&message.subject) {
            Ok(()) => {}
            Err(_) if self.is_reply(&message.subject) => {}
            Err(GrantError::Invalid(e)) => {
                return refused(self, PublishError::InvalidSubject(e.to_string()));
            }
            Err(e) => return refused(self, PublishError::NotGranted(e.to_string())),
        }
        if let Some(bad) = message
            .headers
            .iter()
            .find(|(name, value)| !valid_header_name(name) || value.contains(['\r', '\n']))
        {
            return refused(
                self,
                PublishError::InvalidSubject(format!(
                    "header `{}` has an invalid name or a line break in its value",
                    bad.0
                )),
            );
        }
        let over = if self.messages.len() as u32 >= self.limits.max_messages {
            Some(format!(
                "at most {} publishes per event (max_publishes)",
                self.limits.max_messages
            ))
        } else if self.bytes.saturating_add(message.size()) > self.limits.max_bytes {
            Some(format!(
                "at most {} bytes (payload, subject and headers) published per event (max_publish_bytes)",
                self.limits.max_bytes
            ))
        } else {
            None
        };
        if let Some(limit) = over {
            self.limit_reached.get_or_insert_with(|| limit.clone());
            return refused(self, PublishError::LimitExceeded(limit));
        }
        self.bytes += message.size();
        self.messages.push(message);
        Ok(())
    }

    /// How many publishes were refused in this invocation.
    pub fn refused(&self) -> u32 {
        self.refused
    }

    /// The publish limit this invocation ran into, if it did.
    pub fn limit_reached(&self) -> Option<&str> {
        self.limit_reached.as_deref()
    }

    /// Forget everything of the previous event (a reused instance).
    pub fn reset(&mut self) {
        self.messages.clear();
        self.bytes = 0;
        self.refused = 0;
        self.limit_reached = None;
    }

    /// Take the buffered messages (to commit them).
    pub fn take(&mut self) -> Vec<OutboundMessage> {
        self.bytes = 0;
        std::mem::take(&mut self.messages)
    }
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

impl HostState {
    /// The `publish` import of every contract version: validate and buffer.
    pub fn publish_message(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), PublishError> {
        let message = OutboundMessage {
            subject,
            payload: Bytes::from(payload),
            headers,
        };
        let result = self.outbox.push(message);
        if let Err(e) = &result {
            let why = e.message();
            // The first refusal of an event is worth a warning; a plugin
            // retrying in a loop must not turn it into a log flood (the total
            // is counted in the plugin's stats).
            if self.outbox.refused() == 1 {
                tracing::warn!("plugin publish refused: {why}");
            } else {
                tracing::debug!("plugin publish refused: {why}");
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(subject: &str, len: usize) -> OutboundMessage {
        OutboundMessage {
            subject: subject.into(),
            payload: Bytes::from(vec![0u8; len]),
            headers: vec![],
        }
    }

    #[test]
    fn outbox_enforces_grants_and_limits() {
        let grants = Arc::new(PublishGrants::new(vec!["out.>".into()]));
        let mut outbox = Outbox::new(
            grants,
            PublishLimits {
                max_messages: 2,
                // Subject bytes count too: "out.a" + 4 = 9.
                max_bytes: 30,
            },
        );
        assert!(outbox.push(msg("out.a", 4)).is_ok());
        assert!(matches!(
            outbox.push(msg("other", 1)),
            Err(PublishError::NotGranted(_))
        ));
        assert!(matches!(
            outbox.push(msg("out.*", 1)),
            Err(PublishError::InvalidSubject(_))
        ));
        assert_eq!(outbox.limit_reached(), None, "grant refusals are no limit");
        assert!(matches!(
            outbox.push(msg("out.b", 17)),
            Err(PublishError::LimitExceeded(_))
        ));
        assert!(
            outbox
                .limit_reached()
                .unwrap()
                .contains("max_publish_bytes")
        );
        assert!(outbox.push(msg("out.b", 16)).is_ok());
        assert!(matches!(
            outbox.push(msg("out.c", 0)),
            Err(PublishError::LimitExceeded(_))
        ));
        assert_eq!(outbox.refused(), 4);
        assert!(
            outbox
                .limit_reached()
                .unwrap()
                .contains("max_publish_bytes"),
            "the first limit reached is the one reported"
        );
        assert_eq!(outbox.take().len(), 2);
    }
}
