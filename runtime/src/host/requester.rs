//! The `requester` capability (contract 0.2.0): a plugin asks another
//! service with a NATS request and waits for the answer.
//!
//! A request goes only to a subject the plugin's manifest grants (`request`)
//! and the operator allows (`request_allow`), never to a reserved one; it is
//! bounded by the attempt's deadline and a per-event count. Unlike publishes
//! it is sent at once (the plugin needs the answer now), so a retried event
//! asks again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::client::RequestErrorKind;

use crate::contract::{Header, RequestError, Response};
use crate::subject::{GrantError, PublishGrants};

/// Most requests one event may send.
pub const MAX_REQUESTS: u32 = 16;

/// What a plugin may ask, and the connection to ask on.
#[derive(Debug, Clone)]
pub struct Requester {
    client: async_nats::Client,
    grants: Arc<PublishGrants>,
}

impl Requester {
    /// Requests on `client` to the subjects `grants` allow.
    pub fn new(client: async_nats::Client, grants: Arc<PublishGrants>) -> Requester {
        Requester { client, grants }
    }
}

/// One attempt's requests.
#[derive(Debug, Default)]
pub struct RequestBudget {
    requester: Option<Requester>,
    deadline: Option<Instant>,
    sent: u32,
    refused: u32,
}

impl RequestBudget {
    /// A budget for one attempt ending at `deadline`; `None`: nothing granted.
    pub fn new(requester: Option<Requester>, deadline: Instant) -> RequestBudget {
        RequestBudget {
            requester,
            deadline: Some(deadline),
            sent: 0,
            refused: 0,
        }
    }

    /// Requests refused in this attempt (not granted, invalid, over the limit).
    pub fn refused(&self) -> u32 {
        self.refused
    }

    fn refuse(&mut self, e: RequestError) -> Result<Response, RequestError> {
        self.refused += 1;
        Err(e)
    }

    /// Send one request and wait for its answer.
    pub async fn request(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<Header>,
        timeout: Option<Duration>,
    ) -> Result<Response, RequestError> {
        let Some(requester) = self.requester.clone() else {
            return self.refuse(RequestError::NotGranted(format!(
                "`{subject}`: the manifest grants no request subjects (`request = [...]`)"
            )));
        };
        match requester.grants.check(&subject) {
            Ok(()) => {}
            Err(GrantError::Invalid(e)) => {
                return self.refuse(RequestError::InvalidSubject(e.to_string()));
            }
            Err(GrantError::NotAllowed { allowed, .. }) => {
                return self.refuse(RequestError::NotGranted(format!(
                    "`{subject}` is granted by the manifest but not allowed by the operator for this plugin (allowed: {allowed}); the host config's `request_allow` decides"
                )));
            }
            Err(GrantError::Reserved(_)) => {
                return self.refuse(RequestError::NotGranted(format!(
                    "`{subject}` is reserved ($JS, $SYS, $KV, _INBOX, the DLQ): never requestable"
                )));
            }
            Err(_) => {
                return self.refuse(RequestError::NotGranted(format!(
                    "`{subject}` is not in the manifest's `request` grants ({})",
                    requester.grants.patterns().join(", ")
                )));
            }
        }
        if self.sent >= MAX_REQUESTS {
            return self.refuse(RequestError::LimitExceeded(format!(
                "at most {MAX_REQUESTS} requests per event"
            )));
        }
        self.sent += 1;
        let left = self.deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let wait = timeout.map_or(left, |t| t.min(left));
        let mut map = HeaderMap::new();
        for h in &headers {
            map.append(h.name.as_str(), h.value.as_str());
        }
        let request = async_nats::Request::new()
            .payload(payload.into())
            .headers(map)
            .timeout(Some(wait));
        match requester
            .client
            .send_request(subject.clone(), request)
            .await
        {
            Ok(answer) => Ok(Response {
                payload: answer.payload.to_vec(),
                headers: crate::nats::convert::headers_to_vec(answer.headers.as_ref()),
            }),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => {
                    RequestError::NoResponders(format!("nobody answers on `{subject}`"))
                }
                RequestErrorKind::TimedOut => {
                    RequestError::TimedOut(format!("no answer on `{subject}` within {wait:?}"))
                }
                RequestErrorKind::InvalidSubject => {
                    RequestError::InvalidSubject(format!("`{subject}` is not a valid subject"))
                }
                RequestErrorKind::MaxPayloadExceeded | RequestErrorKind::Other => {
                    RequestError::Unavailable(format!("request to `{subject}` failed: {e}"))
                }
            }),
        }
    }
}
