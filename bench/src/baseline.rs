//! The baselines: the fastest plain async-nats consumers doing the same job
//! as the plugin, without WebAssembly. Each runs on its own OS thread with
//! its own single-threaded tokio runtime and its own connection, so it does
//! not share an executor with the publisher and collector (the sluice host
//! is a separate process; this is the in-process equivalent).
//!
//! - core: one subscription per subject, messages handled inline, in order;
//! - JetStream: a durable pull consumer (`messages()`, which keeps pull
//!   requests pipelined) with explicit ack per message, `concurrency` messages
//!   in flight (1 = strictly sequential).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};

/// What the consumer does per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Nothing (the no-op plugin's job).
    Noop,
    /// Parse JSON, add fields, publish one derived event, like plugins/enrich.
    /// In JetStream mode the derived publish is confirmed by JetStream before
    /// the ack, like sluice's outbox with `confirm = true`.
    Enrich,
    /// Republish the payload unchanged to `mirror.<subject>`, like
    /// plugins/mirror (the smallest job whose completion is observable, for
    /// no-op latency).
    Mirror,
}

/// The derived subject of `plugins/enrich`: `a.b` -> `a.enriched.b`.
pub fn enriched_subject(subject: &str) -> String {
    match subject.split_once('.') {
        Some((prefix, rest)) => format!("{prefix}.enriched.{rest}"),
        None => format!("{subject}.enriched"),
    }
}

/// The enrich job on one payload: the derived subject and payload.
pub fn enrich(subject: &str, payload: &[u8]) -> Option<(String, Bytes)> {
    let mut order: Value = serde_json::from_slice(payload).ok()?;
    let fields = order.as_object_mut()?;
    let total = fields
        .get("quantity")
        .and_then(Value::as_f64)
        .zip(fields.get("unit_price").and_then(Value::as_f64))
        .map(|(q, p)| q * p);
    fields.insert("total".into(), json!(total));
    fields.insert("enriched_by".into(), json!("native/enrich"));
    fields.insert("source_subject".into(), json!(subject));
    let body = serde_json::to_vec(&order).ok()?;
    Some((enriched_subject(subject), Bytes::from(body)))
}

/// A running native consumer; stopped (and its thread joined) on drop.
pub struct Native {
    /// Events finished so far.
    pub progress: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Native {
    /// Stop and report the consumer's error, if it had one.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("baseline thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Native {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Where a native consumer reads from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Core subscriptions to these subjects.
    Core(Vec<String>),
    /// A durable pull consumer on a stream.
    JetStream {
        /// The stream.
        stream: String,
        /// Durable consumer name.
        durable: String,
        /// Messages handled at once.
        concurrency: usize,
    },
}

/// Start a native consumer; returns once it is subscribed.
pub fn spawn(url: &str, source: Source, job: Job) -> anyhow::Result<Native> {
    let progress = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let (url, counter) = (url.to_string(), progress.clone());
    let thread = std::thread::Builder::new()
        .name("baseline".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = async_nats::connect(&url)
                    .await
                    .context("baseline connect")?;
                let run = consume(client, source, job, counter, ready_tx);
                tokio::select! {
                    r = run => r,
                    _ = stop_rx => Ok(()),
                }
            })
        })?;
    match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => Ok(Native {
            progress,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let _ = stop_tx.send(());
            match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => anyhow::bail!("baseline consumer did not start"),
            }
        }
    }
}

async fn consume(
    client: async_nats::Client,
    source: Source,
    job: Job,
    progress: Arc<AtomicU64>,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    match source {
        Source::Core(subjects) => {
            let mut subs = Vec::new();
            for s in subjects {
                subs.push(client.subscribe(s).await?);
            }
            client.flush().await?;
            let _ = ready.send(Ok(()));
            let mut messages = futures::stream::select_all(subs);
            while let Some(msg) = messages.next().await {
                if job == Job::Enrich
                    && let Some((subject, body)) = enrich(&msg.subject, &msg.payload)
                {
                    client.publish(subject, body).await?;
                }
                if job == Job::Mirror {
                    client
                        .publish(format!("mirror.{}", msg.subject), msg.payload.clone())
                        .await?;
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
        Source::JetStream {
            stream,
            durable,
            concurrency,
        } => {
            use async_nats::jetstream::consumer::{AckPolicy, pull};
            let js = async_nats::jetstream::new(client);
            let stream = js.get_stream(&stream).await.context("baseline: stream")?;
            let consumer = stream
                .get_or_create_consumer(
                    &durable,
                    pull::Config {
                        durable_name: Some(durable.clone()),
                        ack_policy: AckPolicy::Explicit,
                        ..Default::default()
                    },
                )
                .await
                .context("baseline: consumer")?;
            let messages = consumer.messages().await.context("baseline: pull")?;
            let _ = ready.send(Ok(()));
            let js = &js;
            let progress = &progress;
            messages
                .for_each_concurrent(concurrency.max(1), |msg| async move {
                    let Ok(msg) = msg else { return };
                    if job == Job::Enrich
                        && let Some((subject, body)) = enrich(&msg.subject, &msg.payload)
                    {
                        match js.publish(subject, body).await {
                            Ok(ack) => {
                                if ack.await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                    if msg.ack().await.is_ok() {
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrich_matches_the_plugin() {
        let (subject, body) = enrich("orders.created", &crate::load::payload(3, 7)).unwrap();
        assert_eq!(subject, "orders.enriched.created");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["quantity"], 4);
        assert!((v["total"].as_f64().unwrap() - 79.8).abs() < 1e-9);
        assert_eq!(v["t"], 7);
        assert!(enrich("x", b"[1]").is_none());
        assert_eq!(enriched_subject("solo"), "solo.enriched");
    }
}
