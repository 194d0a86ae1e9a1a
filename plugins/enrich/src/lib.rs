//! `enrich`: parses a JSON object, adds fields, and publishes the result to
//! `<prefix>.enriched.<rest>` (for `orders.created` -> `orders.enriched.created`).
//!
//! Invalid JSON is a permanent error (retrying cannot fix it). The publish is
//! part of the outbox: it is sent only when the handler returns `Ok`.
use serde_json::{Value, json};
use sluice_sdk::{Event, HandlerError, HandlerResult};

fn handle(event: Event) -> HandlerResult {
    let mut order: Value = event.json()?;
    let Some(fields) = order.as_object_mut() else {
        return Err(HandlerError::permanent("expected a JSON object"));
    };
    let total = fields
        .get("quantity")
        .and_then(Value::as_f64)
        .zip(fields.get("unit_price").and_then(Value::as_f64))
        .map(|(q, p)| q * p);
    fields.insert("total".into(), json!(total));
    fields.insert("enriched_by".into(), json!("sluice/enrich"));
    fields.insert("source_subject".into(), json!(event.subject));
    fields.insert("idempotency_key".into(), json!(event.idempotency_key));

    let derived = match event.subject.split_once('.') {
        Some((prefix, rest)) => format!("{prefix}.enriched.{rest}"),
        None => format!("{}.enriched", event.subject),
    };
    sluice_sdk::publish_json(&derived, &order)?;
    sluice_sdk::info!("enriched {} -> {derived}", event.subject);
    Ok(())
}

sluice_sdk::export_handler!(handle);
