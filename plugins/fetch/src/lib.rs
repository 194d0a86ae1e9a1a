//! `fetch`: a test plugin for outbound HTTP. The event's payload holds URLs,
//! one per line; the plugin GETs each in turn (without an idempotency key
//! when the line starts with `-`) and publishes `<status> <body bytes>` per
//! URL to `fetched.out`. The first failed request fails the event with the
//! SDK's error (permanent when the host refused it, retryable on a timeout).
use sluice_sdk::{Event, HandlerResult, http};

fn handle(event: Event) -> HandlerResult {
    let mut report = String::new();
    for line in event.text()?.lines().filter(|l| !l.trim().is_empty()) {
        let (url, keyed) = match line.trim().strip_prefix('-') {
            Some(url) => (url, false),
            None => (line.trim(), true),
        };
        let mut request = http::Request::new("GET", url);
        if !keyed {
            request = request.without_idempotency_key();
        }
        let response = request.send()?;
        report.push_str(&format!("{} {}\n", response.status, response.body.len()));
    }
    sluice_sdk::publish("fetched.out", report)?;
    Ok(())
}

sluice_sdk::export_handler!(handle);
