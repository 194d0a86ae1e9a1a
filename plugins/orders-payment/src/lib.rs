//! `orders-payment`: the order saga's payment step (examples/orders), over
//! outbound HTTP to the payment service at the `payment_url` configuration.
//!
//! - `orders.reserved`: POST `/charges`. Charged: publish `orders.paid` with
//!   the charge id. Declined (402): publish `orders.payment_declined`, which
//!   starts the compensation (the inventory step releases the stock). 5xx,
//!   429 or no answer: a retryable error, so the host retries with backoff
//!   and, if the service stays down, the circuit breaker opens and the events
//!   wait in the stream. Any other answer is a permanent error (dead letter).
//! - `orders.shipping_failed` (compensation): POST `/refunds`, then publish
//!   `orders.refunded` (the inventory step then releases the stock).
//!
//! Every request carries the event's idempotency key as `Idempotency-Key`
//! (the SDK's default), stable across retries, redeliveries and replays, so
//! the service charges (or refunds) an order once however often it is asked.
mod transport;

use serde_json::{Value, json};
use sluice_sdk::{Event, HandlerError, HandlerResult, config, publish_json};
use transport::Answer;

fn handle(event: Event) -> HandlerResult {
    let mut order: Value = event.json()?;
    let id = order
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| HandlerError::permanent("the order has no `id`"))?
        .to_string();
    let base = config::require("payment_url")?;
    let base = base.trim_end_matches('/');
    match event.subject.as_str() {
        "orders.reserved" => {
            let request = json!({
                "order": id,
                "amount_cents": order.get("amount_cents"),
                "card": order.get("card"),
            });
            let response = transport::post(base, "/charges", &request)?;
            match response.status {
                200..=299 => {
                    let receipt = response.json()?;
                    order["charge_id"] = receipt["charge_id"].clone();
                    sluice_sdk::info!("order {id}: charged ({})", order["charge_id"]);
                    publish_json("orders.paid", &order)
                }
                402 => {
                    order["reason"] = json!("payment declined");
                    sluice_sdk::info!("order {id}: payment declined; compensating");
                    publish_json("orders.payment_declined", &order)
                }
                status => Err(failure(status, &response, "charge")),
            }
        }
        "orders.shipping_failed" => {
            let request = json!({
                "order": id,
                "amount_cents": order.get("amount_cents"),
                "charge_id": order.get("charge_id"),
            });
            let response = transport::post(base, "/refunds", &request)?;
            if !response.is_success() {
                return Err(failure(response.status, &response, "refund"));
            }
            let receipt = response.json()?;
            order["refund_id"] = receipt["refund_id"].clone();
            sluice_sdk::info!("order {id}: refunded ({})", order["refund_id"]);
            publish_json("orders.refunded", &order)
        }
        other => Err(HandlerError::permanent(format!(
            "orders-payment does not handle {other}"
        ))),
    }
}

/// A failed call: retryable when the service is overloaded or down (the
/// breaker counts these), permanent when it refused the request itself.
fn failure(status: u16, response: &Answer, what: &str) -> HandlerError {
    let why = format!(
        "payment service answered {status} to the {what}: {}",
        String::from_utf8_lossy(&response.body)
    );
    if status == 429 || status >= 500 {
        HandlerError::retryable(why)
    } else {
        HandlerError::permanent(why)
    }
}

sluice_sdk::export_handler!(handle);
