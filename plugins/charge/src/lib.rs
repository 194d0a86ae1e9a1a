//! `charge`: the outbound HTTP example. Each order (a JSON event) is POSTed
//! to the payment API at the `url` configuration value; the SDK sends the
//! event's idempotency key as `Idempotency-Key`, so a retried event charges
//! once at an API that honours it.
//!
//! - 2xx: the API's answer is published to `charges.done`;
//! - 5xx (or 429): retryable, after the API's `Retry-After` if it gives one;
//!   the host's retry policy and backoff do the retrying;
//! - other 4xx: permanent, the event is dead-lettered with the API's reason.
use std::time::Duration;

use sluice_sdk::{Event, HandlerError, HandlerResult, http};

fn handle(event: Event) -> HandlerResult {
    let url = sluice_sdk::config::require("url")?;
    let order: serde_json::Value = event.json()?;
    let response = http::post_json(&url, &order)?;
    match response.status {
        200..=299 => {
            sluice_sdk::publish_with_headers(
                "charges.done",
                &response.body,
                &[("Content-Type", "application/json")],
            )?;
            Ok(())
        }
        429 | 500..=599 => {
            let why = format!("payment API answered {}", response.status);
            Err(match retry_after(&response) {
                Some(delay) => HandlerError::retry_after(why, delay),
                None => HandlerError::retryable(why),
            })
        }
        status => Err(HandlerError::permanent(format!(
            "payment API refused the charge with {status}: {}",
            String::from_utf8_lossy(&response.body)
        ))),
    }
}

/// The API's `Retry-After` in seconds, if it sent one.
fn retry_after(response: &http::Response) -> Option<Duration> {
    let seconds = response.header("retry-after")?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

sluice_sdk::export_handler!(handle);
