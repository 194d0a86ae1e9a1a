//! The `publisher` import and the outbox behind it.
//!
//! A plugin's publishes are validated at once (grants, limits) but only
//! buffered; the dispatcher sends them after the handler returned `ok`. A
//! failed attempt's outbox is dropped, so a retry never double-publishes.

use std::sync::Arc;

use bytes::Bytes;

use crate::engine::bindings::v0_1::sluice::plugin::{publisher, types};
use crate::host::HostState;
use crate::subject::{GrantError, PublishGrants};

/// Per-event caps on what a plugin may publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLimits {
    /// Most messages one event may publish.
    pub max_messages: u32,
    /// Most payload bytes (summed) one event may publish.
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
        }
    }

    /// Validate and buffer one message.
    pub fn push(&mut self, message: OutboundMessage) -> Result<(), types::PublishError> {
        let refused = |this: &mut Self, e: types::PublishError| {
            this.refused += 1;
            Err(e)
        };
        match self.grants.check(&message.subject) {
            Ok(()) => {}
            Err(GrantError::Invalid(e)) => {
                return refused(self, types::PublishError::InvalidSubject(e.to_string()));
            }
            Err(e) => return refused(self, types::PublishError::NotGranted(e.to_string())),
        }
        if let Some(bad) = message
            .headers
            .iter()
            .find(|(name, value)| !valid_header_name(name) || value.contains(['\r', '\n']))
        {
            return refused(
                self,
                types::PublishError::InvalidSubject(format!(
                    "header `{}` has an invalid name or a line break in its value",
                    bad.0
                )),
            );
        }
        if self.messages.len() as u32 >= self.limits.max_messages {
            return refused(
                self,
                types::PublishError::LimitExceeded(format!(
                    "at most {} publishes per event",
                    self.limits.max_messages
                )),
            );
        }
        if self.bytes + message.payload.len() > self.limits.max_bytes {
            return refused(
                self,
                types::PublishError::LimitExceeded(format!(
                    "at most {} payload bytes published per event",
                    self.limits.max_bytes
                )),
            );
        }
        self.bytes += message.payload.len();
        self.messages.push(message);
        Ok(())
    }

    /// How many publishes were refused in this invocation.
    pub fn refused(&self) -> u32 {
        self.refused
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

impl publisher::Host for HostState {
    fn publish(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<types::Header>,
    ) -> Result<(), types::PublishError> {
        let message = OutboundMessage {
            subject,
            payload: Bytes::from(payload),
            headers: headers.into_iter().map(|h| (h.name, h.value)).collect(),
        };
        let subject = message.subject.clone();
        let result = self.outbox.push(message);
        if let Err(e) = &result {
            let why = match e {
                types::PublishError::NotGranted(m)
                | types::PublishError::InvalidSubject(m)
                | types::PublishError::LimitExceeded(m) => m,
            };
            tracing::warn!(publish.subject = %subject, "plugin publish refused: {why}");
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
                max_bytes: 10,
            },
        );
        assert!(outbox.push(msg("out.a", 4)).is_ok());
        assert!(matches!(
            outbox.push(msg("other", 1)),
            Err(types::PublishError::NotGranted(_))
        ));
        assert!(matches!(
            outbox.push(msg("out.*", 1)),
            Err(types::PublishError::InvalidSubject(_))
        ));
        assert!(matches!(
            outbox.push(msg("out.b", 7)),
            Err(types::PublishError::LimitExceeded(_))
        ));
        assert!(outbox.push(msg("out.b", 6)).is_ok());
        assert!(matches!(
            outbox.push(msg("out.c", 0)),
            Err(types::PublishError::LimitExceeded(_))
        ));
        assert_eq!(outbox.refused(), 4);
        assert_eq!(outbox.take().len(), 2);
    }
}
