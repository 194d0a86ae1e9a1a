//! The saga seen from outside: the `ORDERS` stream every step reads and
//! writes, placing orders into it, and an observer that follows each order's
//! events (`orders.<step>` carrying the order's `id`) to its end.
//!
//! An order is *settled* when one of the terminal events is seen:
//! `orders.completed` (shipped), `orders.rejected` (invalid) or
//! `orders.cancelled` (out of stock, or compensated after a declined payment
//! or a failed shipment).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use serde_json::Value;

/// The stream holding every saga event.
pub const STREAM: &str = "ORDERS";
/// The dead-letter stream of the host (its default name).
pub const DLQ_STREAM: &str = "SLUICE_DLQ";
/// The events that end an order's saga.
pub const TERMINAL: [&str; 3] = ["completed", "rejected", "cancelled"];
/// The durable consumers of the four steps (`sluice-<plugin>`).
pub const CONSUMERS: [&str; 4] = [
    "sluice-orders-validate",
    "sluice-orders-inventory",
    "sluice-orders-payment",
    "sluice-orders-shipping",
];

/// Create the `ORDERS` stream (subjects `orders.>`, a 10-minute duplicate
/// window so republished steps are dropped) if it does not exist.
pub async fn create_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    js.get_or_create_stream(stream::Config {
        name: STREAM.to_string(),
        subjects: vec!["orders.>".to_string()],
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating stream {STREAM}: {e}"))?;
    Ok(())
}

/// Publish `order` to `orders.placed` (with `Nats-Msg-Id: order-<id>`, so
/// placing it twice is one order) and wait for the stream's ack.
pub async fn place(js: &jetstream::Context, order: &Value) -> anyhow::Result<()> {
    let id = order
        .get("id")
        .and_then(Value::as_str)
        .context("order id")?;
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("order-{id}").as_str());
    js.publish_with_headers("orders.placed", headers, serde_json::to_vec(order)?.into())
        .await
        .map_err(|e| anyhow::anyhow!("publishing order {id}: {e}"))?
        .await
        .map_err(|e| anyhow::anyhow!("order {id} not acknowledged by {STREAM}: {e}"))?;
    Ok(())
}

/// An order for `items` (`(sku, qty)`), paid with `card`, shipped to `country`.
pub fn order(id: &str, items: &[(&str, i64)], card: &str, country: &str) -> Value {
    serde_json::json!({
        "id": id,
        "items": items.iter().map(|(sku, qty)| serde_json::json!({"sku": sku, "qty": qty})).collect::<Vec<_>>(),
        "card": card,
        "country": country,
    })
}

/// A card the payment service charges.
pub const GOOD_CARD: &str = "4242 4242 4242 4242";
/// A card the payment service always declines.
pub const DECLINED_CARD: &str = "4000 0000 0000 0002";

/// What the observer saw of one order.
#[derive(Debug, Clone, Default)]
pub struct Trail {
    /// Steps in arrival order (`placed`, `validated`, ...).
    pub steps: Vec<String>,
    /// The last event's payload.
    pub last: Value,
}

impl Trail {
    /// The terminal step, if the order is settled.
    pub fn outcome(&self) -> Option<&str> {
        self.steps
            .iter()
            .find(|s| TERMINAL.contains(&s.as_str()))
            .map(String::as_str)
    }

    /// `placed -> validated -> ...`.
    pub fn path(&self) -> String {
        self.steps.join(" -> ")
    }
}

/// Follows every `orders.>` event (a core subscription: it sees each
/// publish into the stream as it happens).
#[derive(Clone)]
pub struct Observer {
    trails: Arc<Mutex<BTreeMap<String, Trail>>>,
}

impl Observer {
    /// Subscribe with `client`; the subscription is in place on return.
    pub async fn start(client: &async_nats::Client) -> anyhow::Result<Observer> {
        let mut events = client.subscribe("orders.>").await?;
        client.flush().await?;
        let trails: Arc<Mutex<BTreeMap<String, Trail>>> = Arc::default();
        let observer = Observer {
            trails: trails.clone(),
        };
        tokio::spawn(async move {
            while let Some(message) = events.next().await {
                let step = message.subject.trim_start_matches("orders.").to_string();
                let Ok(body) = serde_json::from_slice::<Value>(&message.payload) else {
                    continue;
                };
                let Some(id) = body.get("id").and_then(Value::as_str) else {
                    continue;
                };
                let mut trails = trails.lock().unwrap();
                let trail = trails.entry(id.to_string()).or_default();
                // A step published again (a replay, a redelivery) is listed once.
                if !trail.steps.contains(&step) {
                    trail.steps.push(step);
                }
                trail.last = body;
            }
        });
        Ok(observer)
    }

    /// The trail of order `id` so far.
    pub fn trail(&self, id: &str) -> Trail {
        self.trails
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every order seen, with its trail.
    pub fn all(&self) -> BTreeMap<String, Trail> {
        self.trails.lock().unwrap().clone()
    }

    /// Wait until every order in `ids` is settled; their trails.
    pub async fn settled(&self, ids: &[String], within: Duration) -> anyhow::Result<Vec<Trail>> {
        let deadline = Instant::now() + within;
        loop {
            let trails: Vec<Trail> = ids.iter().map(|id| self.trail(id)).collect();
            if trails.iter().all(|t| t.outcome().is_some()) {
                return Ok(trails);
            }
            if Instant::now() > deadline {
                let open: Vec<String> = ids
                    .iter()
                    .zip(&trails)
                    .filter(|(_, t)| t.outcome().is_none())
                    .map(|(id, t)| format!("{id}: {}", t.path()))
                    .collect();
                bail!("not settled within {within:?}: {}", open.join("; "));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until order `id` has taken step `step` (e.g. `validated`).
    pub async fn reached(&self, id: &str, step: &str, within: Duration) -> anyhow::Result<Trail> {
        let deadline = Instant::now() + within;
        loop {
            let trail = self.trail(id);
            if trail.steps.iter().any(|s| s == step) {
                return Ok(trail);
            }
            if Instant::now() > deadline {
                bail!(
                    "order {id} did not reach `{step}` within {within:?}: {}",
                    trail.path()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Messages in stream `name` (0 if it does not exist).
pub async fn stream_messages(js: &jetstream::Context, name: &str) -> anyhow::Result<u64> {
    match js.get_stream(name).await {
        Ok(mut stream) => Ok(stream
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("{name} info: {e}"))?
            .state
            .messages),
        Err(_) => Ok(0),
    }
}

/// Events not yet settled by the steps: pending plus unacknowledged, summed
/// over the four durable consumers of `ORDERS`.
pub async fn backlog(js: &jetstream::Context) -> anyhow::Result<u64> {
    let stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("{STREAM}: {e}"))?;
    let mut total = 0;
    for durable in CONSUMERS {
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(durable)
            .await
            .map_err(|e| anyhow::anyhow!("consumer {durable}: {e}"))?;
        let info = consumer
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("consumer {durable} info: {e}"))?;
        total += info.num_pending + info.num_ack_pending as u64;
    }
    Ok(total)
}
