//! A NATS-to-HTTP bridge for the payment step: answers requests on
//! `payments.http` (`{"url": ..., "body": ...}` with an `Idempotency-Key`
//! header) by POSTing to the payment service and replying
//! `{"status": N, "body": "..."}`, or `{"status": 0, "error": "..."}` when
//! the service does not answer.
//!
//! Why it exists: the payment plugin reaches the service through a NATS
//! request while the host's outbound HTTP (contract 0.2.0 `wasi:http`) is
//! not merged. It forwards only to the one service it was started for.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::http;

/// The subject the bridge answers.
pub const SUBJECT: &str = "payments.http";

/// Serve `payments.http` for the service at `service_url` until the client closes.
pub async fn spawn(
    client: async_nats::Client,
    service_url: String,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut requests = client.subscribe(SUBJECT).await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            let client = client.clone();
            let service_url = service_url.clone();
            tokio::spawn(async move {
                let key = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Idempotency-Key"))
                    .map(|v| v.as_str().to_string());
                let payload = message.payload.to_vec();
                let answer = tokio::task::spawn_blocking(move || {
                    forward(&service_url, &payload, key.as_deref())
                })
                .await
                .unwrap_or_else(|e| json!({ "status": 0, "error": e.to_string() }));
                let _ = client
                    .publish(
                        reply,
                        serde_json::to_vec(&answer).unwrap_or_default().into(),
                    )
                    .await;
            });
        }
    }))
}

/// POST one bridged request; the answer to send back.
fn forward(service_url: &str, payload: &[u8], key: Option<&str>) -> Value {
    let request: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return json!({ "status": 400, "body": format!("bad bridge request: {e}") }),
    };
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !url.starts_with(service_url) {
        return json!({ "status": 403, "body": format!("the bridge forwards only to {service_url}") });
    }
    let body = serde_json::to_vec(request.get("body").unwrap_or(&Value::Null)).unwrap_or_default();
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key));
    }
    match http::request("POST", url, &headers, &body, Duration::from_secs(10)) {
        Ok(response) => json!({ "status": response.status, "body": response.text() }),
        Err(e) => json!({ "status": 0, "error": format!("{e:#}") }),
    }
}
