//! `{{name}}`: a sluice consumer plugin. Parses the payload as JSON, logs it,
//! and publishes it to `<subject>.seen`. Edit `handle`; build with `make`.
use serde_json::Value;
use sluice_sdk::{Event, HandlerError, HandlerResult};

fn handle(event: Event) -> HandlerResult {
    let value: Value = event.json()?; // bad JSON -> permanent error
    if value.is_null() {
        return Err(HandlerError::permanent("expected a JSON value, got null"));
    }
    sluice_sdk::info!("{{name}} got an event on {}", event.subject);
    sluice_sdk::publish_json(&format!("{}.seen", event.subject), &value)?; // sent only if we return Ok
    Ok(())
}

sluice_sdk::export_handler!(handle);
