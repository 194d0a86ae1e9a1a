//! `mirror`: republishes each event to `mirror.<subject>` with the same
//! payload bytes and headers (except `Nats-Msg-Id`, which the host derives),
//! plus `x-idempotency-key`, `x-attempt` and `x-reply-to`. Tests use it to see
//! exactly what a plugin received.
use sluice_sdk::{Event, HandlerResult};

fn handle(event: Event) -> HandlerResult {
    let attempt = event.attempt.to_string();
    let reply = event.delivery.reply_to.clone().unwrap_or_default();
    let mut headers: Vec<(&str, &str)> = event
        .headers
        .iter()
        .filter(|h| h.name != "Nats-Msg-Id")
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect();
    headers.push(("x-idempotency-key", &event.idempotency_key));
    headers.push(("x-attempt", &attempt));
    headers.push(("x-reply-to", &reply));
    sluice_sdk::publish_with_headers(
        &format!("mirror.{}", event.subject),
        &event.payload,
        &headers,
    )?;
    Ok(())
}

sluice_sdk::export_handler!(handle);
