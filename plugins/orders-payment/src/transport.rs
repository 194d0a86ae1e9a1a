//! How the payment step reaches the payment service: an HTTP POST through
//! the host's outbound HTTP (contract 0.2.0, `wasi:http`), answered with a
//! status and a body.
//!
//! The SDK sends the event's idempotency key as `Idempotency-Key` on every
//! request by default, so the service charges an order once however often
//! the event is retried, redelivered or replayed.
use serde_json::Value;
use sluice_sdk::{HandlerError, http};

/// The service's answer.
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// Response body.
    pub body: Vec<u8>,
}

impl Answer {
    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body parsed as JSON, or a permanent error.
    pub fn json(&self) -> Result<Value, HandlerError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            HandlerError::permanent(format!("the payment service answered invalid JSON: {e}"))
        })
    }
}

/// POST `body` as JSON to `path` of the service at `base`. No answer in
/// time or no connection (the service is down) is a retryable error; a
/// refusal by the host (origin not granted) is permanent.
pub fn post(base: &str, path: &str, body: &Value) -> Result<Answer, HandlerError> {
    let response = http::post_json(&format!("{base}{path}"), body)?;
    Ok(Answer {
        status: response.status,
        body: response.body,
    })
}
