//! `echo`: logs every event it receives (subject, size, key, attempt, headers).
//! Also writes one line to stdout, which the host tags and logs.
use sluice_sdk::{Event, HandlerResult, Level};

fn handle(event: Event) -> HandlerResult {
    let size = event.payload.len().to_string();
    let attempt = event.attempt.to_string();
    let preview =
        String::from_utf8_lossy(&event.payload[..event.payload.len().min(80)]).into_owned();
    sluice_sdk::log(
        Level::Info,
        &format!("echo: {preview}"),
        &[
            ("subject", &event.subject),
            ("bytes", &size),
            ("key", &event.idempotency_key),
            ("attempt", &attempt),
            ("headers", &event.headers.len().to_string()),
        ],
    );
    println!(
        "echo saw {} bytes on {}",
        event.payload.len(),
        event.subject
    );
    // Request/reply: answer when the event was sent as a request and the reply
    // subject is granted (requests use _INBOX subjects, which are never granted
    // to plugins, so this only works with a custom reply prefix).
    Ok(())
}

sluice_sdk::export_handler!(handle);
