//! How the payment step reaches the payment service: a POST with the event's
//! idempotency key, answered with a status and a body.
//!
//! This version goes through a NATS request to `payments.http`, answered by
//! a small bridge next to the service (examples/orders, `bridge`), because
//! the host's outbound HTTP (contract 0.2.0 `wasi:http`) is not merged yet.
use serde_json::{Value, json};
use sluice_sdk::HandlerError;

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

/// POST `body` to `path` of the service at `base`, with `Idempotency-Key: key`.
/// No answer in time (service or bridge down) is retryable.
pub fn post(base: &str, path: &str, body: &Value, key: &str) -> Result<Answer, HandlerError> {
    let request = json!({ "url": format!("{base}{path}"), "body": body });
    let bytes = serde_json::to_vec(&request).unwrap_or_default();
    let reply =
        sluice_sdk::request_with("payments.http", bytes, &[("Idempotency-Key", key)], None)?;
    let answer: Value = serde_json::from_slice(&reply.payload).map_err(|e| {
        HandlerError::retryable(format!("the payment bridge answered garbage: {e}"))
    })?;
    let status = answer.get("status").and_then(Value::as_u64).unwrap_or(0);
    if status == 0 {
        return Err(HandlerError::retryable(format!(
            "the payment service did not answer: {}",
            answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
        )));
    }
    Ok(Answer {
        status: status as u16,
        body: answer
            .get("body")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .as_bytes()
            .to_vec(),
    })
}
