//! Sample traffic for `make demo`: publishes a few events that exercise each
//! example plugin, prints every derived event that comes back, and exits once
//! it has seen what it expects (or after a deadline).
//!
//! `cargo run -p sluice --example demo_traffic -- nats://127.0.0.1:4222`

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url).await?;
    let mut derived = client.subscribe("orders.enriched.>").await?;
    let mut done = client.subscribe("jobs.*.done").await?;
    let mut ok = client.subscribe("payments.*.ok").await?;
    client.flush().await?;

    let send =
        |subject: &'static str, body: &'static str, headers: &[(&'static str, &'static str)]| {
            let client = client.clone();
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.insert(*k, *v);
            }
            async move {
                println!("demo >> publish {subject} {body} {:?}", headers_text(&map));
                client
                    .publish_with_headers(subject, map, Bytes::from_static(body.as_bytes()))
                    .await
            }
        };
    send("demo.hello", "hello, sluice", &[]).await?;
    send(
        "orders.created",
        r#"{"id":"o-1001","quantity":3,"unit_price":19.5}"#,
        &[("Nats-Msg-Id", "order-1001")],
    )
    .await?;
    send("payments.card", r#"{"id":"p-7"}"#, &[]).await?;
    send("payments.card", "not json", &[]).await?;
    send("jobs.resize", "image-42", &[("x-fail-times", "2")]).await?;
    client.flush().await?;

    // Expect: one enriched order, one payment ack, one job done after retries.
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    let (mut got_order, mut got_payment, mut got_job) = (false, false, false);
    while !(got_order && got_payment && got_job) {
        tokio::select! {
            Some(m) = derived.next() => {
                println!("demo << derived event {}: {}", m.subject, String::from_utf8_lossy(&m.payload));
                got_order = true;
            }
            Some(m) = ok.next() => {
                println!("demo << {} {}", m.subject, String::from_utf8_lossy(&m.payload));
                got_payment = true;
            }
            Some(m) = done.next() => {
                let attempt = m.headers.as_ref().and_then(|h| h.get("x-attempt")).map(|v| v.to_string()).unwrap_or_default();
                println!("demo << {} (succeeded on attempt {attempt}; failed attempts published nothing)", m.subject);
                got_job = true;
            }
            _ = &mut deadline => anyhow::bail!("demo: expected events did not all arrive within 30s"),
        }
    }
    println!("demo: all sample events were processed");
    Ok(())
}

fn headers_text(map: &HeaderMap) -> Vec<String> {
    map.iter()
        .flat_map(|(k, vs)| vs.iter().map(move |v| format!("{k}={}", v.as_str())))
        .collect()
}
