//! `settings`: the configuration example. The payload lists keys
//! (comma-separated); the plugin reads each with `config::get` and publishes
//! `{"key": value-or-null, ...}` to `settings.out`. It logs how many keys it
//! read, never their values (a value may be a secret). A real plugin would
//! use a secret (an API token) rather than publish it; this one publishes
//! what it read so a test can check precedence end to end.
use sluice_sdk::{Event, HandlerResult, config};

fn handle(event: Event) -> HandlerResult {
    let keys = event.text()?;
    let values: serde_json::Map<String, serde_json::Value> = keys
        .split(',')
        .filter(|k| !k.is_empty())
        .map(|key| (key.to_string(), config::get(key).into()))
        .collect();
    sluice_sdk::info!("settings: read {} keys", values.len());
    sluice_sdk::publish_json("settings.out", &values)
}

sluice_sdk::export_handler!(handle);
