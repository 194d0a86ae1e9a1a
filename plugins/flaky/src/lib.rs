//! `flaky`: fails with a retryable error for the first N attempts of each
//! event, N from the `x-fail-times` header (default 0), then succeeds.
//! It publishes `<subject>.done` on every attempt, so tests can see that
//! publishes of failed attempts are discarded (the outbox).
//!
//! Header `x-retry-after-ms` adds a delay hint to the retryable error.
//! Header `x-fail-after-ms` makes each failing attempt take that long (a
//! slow dependency that times out): the event holds its slot meanwhile.
//! Header `x-fail-until-ms` (Unix epoch milliseconds) simulates a dependency
//! that is down until then: every attempt before that time fails (retryable).
use sluice_sdk::{Event, HandlerError, HandlerResult};
use std::time::Duration;

fn handle(event: Event) -> HandlerResult {
    let fail_times: u32 = event
        .header("x-fail-times")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let attempt = event.attempt.to_string();
    sluice_sdk::publish_with_headers(
        &format!("{}.done", event.subject),
        &event.payload,
        &[("x-attempt", &attempt)],
    )?;
    if let Some(until) = event
        .header("x-fail-until-ms")
        .and_then(|v| v.parse::<u128>().ok())
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        if now < until {
            return Err(HandlerError::retryable(format!(
                "dependency down for another {} ms",
                until - now
            )));
        }
    }
    if event.header("x-permanent").is_some() {
        return Err(HandlerError::permanent(
            "told to fail for good (x-permanent)",
        ));
    }
    if event.attempt <= fail_times {
        if let Some(ms) = event.header("x-fail-after-ms").and_then(|v| v.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let message = format!("simulated failure {} of {fail_times}", event.attempt);
        return Err(
            match event
                .header("x-retry-after-ms")
                .and_then(|v| v.parse().ok())
            {
                Some(ms) => HandlerError::retry_after(message, Duration::from_millis(ms)),
                None => HandlerError::retryable(message),
            },
        );
    }
    sluice_sdk::info!("flaky succeeded on attempt {}", event.attempt);
    Ok(())
}

sluice_sdk::export_handler!(handle);
