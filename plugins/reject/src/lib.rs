//! `reject`: accepts only a JSON object with a string `id`; anything else is a
//! permanent error (dead-letter, no retry). Valid events publish `<subject>.ok`.
use serde_json::Value;
use sluice_sdk::{Event, HandlerError, HandlerResult};

fn handle(event: Event) -> HandlerResult {
    let value: Value = event.json()?;
    let Some(id) = value.get("id").and_then(Value::as_str) else {
        return Err(HandlerError::permanent("field `id` (string) is required"));
    };
    sluice_sdk::publish(&format!("{}.ok", event.subject), id)?;
    Ok(())
}

sluice_sdk::export_handler!(handle);
