//! `totals`: a running total per key, kept in state. An event on
//! `totals.add.<key>` carries an amount (a whole number as text); the plugin
//! reads `total/<key>`, writes the sum with compare-and-swap and publishes
//! it to `totals.updated.<key>`. The write commits only if the handler
//! succeeds, and a concurrent update (another host) makes the attempt retry
//! with the new value, so totals are exact.
//!
//! For tests: header `x-fail` makes the handler fail after writing (the
//! write must vanish); header `x-ttl-ms` writes the total with that TTL.
use std::time::Duration;

use sluice_sdk::{Event, HandlerError, HandlerResult, state};

fn handle(event: Event) -> HandlerResult {
    let key = event
        .subject
        .strip_prefix("totals.add.")
        .ok_or_else(|| HandlerError::permanent("expected totals.add.<key>"))?;
    let amount: i64 = event
        .text()?
        .trim()
        .parse()
        .map_err(|_| HandlerError::permanent("the payload is not a whole number"))?;
    let state_key = format!("total/{key}");
    let (total, revision) = match state::get(&state_key)? {
        Some(entry) => (
            String::from_utf8_lossy(&entry.value)
                .parse::<i64>()
                .unwrap_or(0),
            entry.revision,
        ),
        None => (0, 0),
    };
    let total = total + amount;
    match event.header("x-ttl-ms").and_then(|t| t.parse().ok()) {
        Some(ms) => state::set_with_ttl(&state_key, total.to_string(), Duration::from_millis(ms))?,
        None => state::cas(&state_key, revision, total.to_string())?,
    }
    if event.header("x-fail").is_some() {
        return Err(HandlerError::retryable("failing after the write, as asked"));
    }
    sluice_sdk::publish(&format!("totals.updated.{key}"), total.to_string())?;
    Ok(())
}

sluice_sdk::export_handler!(handle);
