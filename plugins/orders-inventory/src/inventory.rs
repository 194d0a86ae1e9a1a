//! The inventory step of the order saga, shared by `orders-inventory` (v1)
//! and `orders-inventory-v2` (the same code with its SKU bug fixed).
//!
//! - `orders.validated`: reserve every item (state key `reserved/<SKU>`
//!   counts units held, capped by the stock in the `stock` config), record
//!   the reservation under `order/<id>` and publish `orders.reserved`; not
//!   enough stock publishes `orders.cancelled` (the saga ends there).
//! - `orders.payment_declined`, `orders.refunded` (compensation): give the
//!   order's units back, delete `order/<id>` and publish `orders.cancelled`.
//!
//! State writes commit with the event (or not at all), and the host runs one
//! event at a time here (`max_concurrency = 1`), so counters never drift:
//! a retried or replayed event finds `order/<id>` and changes nothing twice.
use std::collections::BTreeMap;

use serde_json::{Value, json};
use sluice_sdk::{Event, HandlerError, HandlerResult, config, publish_json, state};

/// How a SKU from an order is matched against the stock table.
// Each version constructs one variant.
#[allow(dead_code)]
#[derive(Clone, Copy)]
pub enum Skus {
    /// v1: exactly as written in the order (the bug: `mug-1` is not `MUG-1`).
    Exact,
    /// v2: case-insensitive, as the validation step (and the catalog) treats SKUs.
    CaseInsensitive,
}

impl Skus {
    fn normalise(self, sku: &str) -> String {
        match self {
            Skus::Exact => sku.to_string(),
            Skus::CaseInsensitive => sku.trim().to_ascii_uppercase(),
        }
    }
}

/// The plugin's entry point, for either version.
pub fn handle(event: Event, skus: Skus) -> HandlerResult {
    let order: Value = event.json()?;
    let id = order
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| HandlerError::permanent("the order has no `id`"))?
        .to_string();
    match event.subject.as_str() {
        "orders.validated" => reserve(&id, order, skus),
        "orders.payment_declined" | "orders.refunded" => release(&id, order),
        other => Err(HandlerError::permanent(format!(
            "orders-inventory does not handle {other}"
        ))),
    }
}

/// Reserve the order's items, or cancel it when stock is short.
fn reserve(id: &str, mut order: Value, skus: Skus) -> HandlerResult {
    let record = format!("order/{id}");
    if state::get(&record)?.is_some() {
        // Reserved by an earlier event for the same order: say so again, hold nothing twice.
        return publish_json("orders.reserved", &order);
    }
    let stock = stock_table()?;
    let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
    for item in items(&order)? {
        let sku = item.get("sku").and_then(Value::as_str).unwrap_or_default();
        let qty = item.get("qty").and_then(Value::as_i64).unwrap_or(0);
        let sku = skus.normalise(sku);
        if !stock.contains_key(&sku) {
            return Err(HandlerError::permanent(format!(
                "unknown SKU `{sku}` in order {id} (stock has {})",
                stock.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        *wanted.entry(sku).or_default() += qty;
    }
    let mut updates = Vec::new();
    for (sku, qty) in &wanted {
        let (held, revision) = counter(&format!("reserved/{sku}"))?;
        if held + qty > stock[sku] {
            order["reason"] = json!(format!(
                "out of stock: {sku} has {} left, the order wants {qty}",
                stock[sku] - held
            ));
            sluice_sdk::info!("order {id}: {}", order["reason"]);
            return publish_json("orders.cancelled", &order);
        }
        updates.push((sku.clone(), held + qty, revision));
    }
    for (sku, value, revision) in updates {
        state::cas(&format!("reserved/{sku}"), revision, value.to_string())?;
    }
    state::set(&record, serde_json::to_vec(&wanted).unwrap_or_default())?;
    sluice_sdk::info!("order {id}: reserved {wanted:?}");
    publish_json("orders.reserved", &order)
}

/// Compensation: give the reserved units back and end the saga as cancelled.
fn release(id: &str, mut order: Value) -> HandlerResult {
    let record = format!("order/{id}");
    if let Some(entry) = state::get(&record)? {
        let held: BTreeMap<String, i64> = serde_json::from_slice(&entry.value).unwrap_or_default();
        for (sku, qty) in &held {
            let key = format!("reserved/{sku}");
            let (count, revision) = counter(&key)?;
            state::cas(&key, revision, (count - qty).max(0).to_string())?;
        }
        state::delete(&record)?;
        sluice_sdk::info!("order {id}: released {held:?} (compensation)");
    }
    if order.get("reason").is_none() {
        order["reason"] = json!("compensated");
    }
    order["released"] = json!(true);
    publish_json("orders.cancelled", &order)
}

/// The order's `items` array.
fn items(order: &Value) -> Result<&Vec<Value>, HandlerError> {
    order
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| HandlerError::permanent("the order has no `items` array"))
}

/// A whole-number counter in state and its revision (0: absent).
fn counter(key: &str) -> Result<(i64, u64), HandlerError> {
    Ok(match state::get(key)? {
        Some(entry) => (
            String::from_utf8_lossy(&entry.value).parse().unwrap_or(0),
            entry.revision,
        ),
        None => (0, 0),
    })
}

/// The `stock` config: `SKU=units,SKU=units`.
fn stock_table() -> Result<BTreeMap<String, i64>, HandlerError> {
    let text = config::require("stock")?;
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (sku, units) = pair.split_once('=').unwrap_or((pair, ""));
            units
                .trim()
                .parse()
                .map(|n| (sku.trim().to_string(), n))
                .map_err(|_| {
                    HandlerError::permanent(format!(
                        "config `stock`: `{pair}` is not SKU=units (e.g. MUG-1=100)"
                    ))
                })
        })
        .collect()
}
