//! Load generation and measurement on the NATS side: the event payload,
//! a burst publisher with a bounded window (closed loop, so neither a slow
//! sluice nor a slow baseline is measured through dropped messages), a paced
//! publisher at a fixed offered rate, a JetStream preloader, and the latency
//! collector that reads the send time back out of derived events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;

use crate::stats::LatencyRecorder;

/// A realistic order event (~180 bytes of JSON). `t` is the send time in ns
/// since the run's clock base, so a derived event (which keeps every field)
/// carries it back to the collector.
pub fn payload(seq: u64, t_ns: u64) -> Bytes {
    Bytes::from(format!(
        "{{\"seq\":{seq},\"t\":{t_ns},\"order_id\":\"ord-{seq:08}\",\"customer\":\"cust-{:04}\",\"quantity\":{},\"unit_price\":19.95,\"currency\":\"EUR\",\"items\":[\"sku-1\",\"sku-2\"]}}",
        seq % 9973,
        1 + seq % 7
    ))
}

/// The fields of a derived event the collector needs.
#[derive(Deserialize)]
struct Stamp {
    t: u64,
}

/// The send-time stamp of a payload (`None` if absent).
pub fn stamp_of(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Stamp>(payload).ok().map(|s| s.t)
}

/// A monotonic clock base shared by publisher and collector (same process).
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A base at now.
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    /// Nanoseconds since the base.
    pub fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// Publish `n` events round-robin over `subjects` as fast as the client
/// allows, but never more than `window` ahead of `progress` (events the
/// consumer finished). Returns when everything was published and flushed.
pub async fn publish_windowed(
    client: &async_nats::Client,
    subjects: &[String],
    n: u64,
    window: u64,
    progress: &AtomicU64,
    clock: Clock,
) -> anyhow::Result<()> {
    let mut seq = 0;
    while seq < n {
        while seq >= progress.load(Ordering::Relaxed) + window {
            client.flush().await.ok();
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let subject = subjects[(seq as usize) % subjects.len()].clone();
        client
            .publish(subject, payload(seq, clock.now_ns()))
            .await
            .context("publishing")?;
        seq += 1;
    }
    client.flush().await.context("flushing")?;
    Ok(())
}

/// Publish at a fixed offered `rate` for `duration`: each millisecond tick
/// sends the events due by then (tokio timers have 1 ms resolution), each
/// stamped with its own send time. Returns the count sent.
pub async fn publish_paced(
    client: &async_nats::Client,
    subject: &str,
    rate: u64,
    duration: Duration,
    clock: Clock,
) -> anyhow::Result<u64> {
    let total = rate * duration.as_millis() as u64 / 1000;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq = 0;
    while seq < total {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while seq < due.min(total) {
            client
                .publish(subject.to_string(), payload(seq, clock.now_ns()))
                .await
                .context("publishing")?;
            seq += 1;
        }
        client.flush().await.context("flushing")?;
    }
    Ok(seq)
}

/// Preload `n` events into a stream via JetStream publish (acks awaited in
/// chunks), round-robin over `subjects`.
pub async fn preload_stream(
    js: &async_nats::jetstream::Context,
    subjects: &[String],
    n: u64,
) -> anyhow::Result<()> {
    let clock = Clock::new();
    let mut acks = Vec::with_capacity(1000);
    for seq in 0..n {
        let subject = subjects[(seq as usize) % subjects.len()].clone();
        acks.push(
            js.publish(subject, payload(seq, clock.now_ns()))
                .await
                .context("JetStream publish")?,
        );
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.context("JetStream publish ack")?;
            }
        }
    }
    for ack in acks {
        ack.await.context("JetStream publish ack")?;
    }
    Ok(())
}

/// Subscribe to `subject` (derived events) and record publish-to-received
/// latency of up to `expected` events; stops `idle` after the last one.
pub struct Collector {
    task: tokio::task::JoinHandle<LatencyRecorder>,
    /// Derived events received so far.
    pub received: Arc<AtomicU64>,
}

impl Collector {
    /// Start collecting (the subscription is live when this returns).
    pub async fn start(
        client: &async_nats::Client,
        subject: &str,
        expected: u64,
        clock: Clock,
        idle: Duration,
    ) -> anyhow::Result<Collector> {
        let mut sub = client.subscribe(subject.to_string()).await?;
        client.flush().await?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            let mut rec = LatencyRecorder::new();
            while rec.len() < expected {
                match tokio::time::timeout(idle, sub.next()).await {
                    Ok(Some(msg)) => {
                        let now = clock.now_ns();
                        if let Some(t) = stamp_of(&msg.payload) {
                            rec.record_ns(now.saturating_sub(t));
                        }
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            rec
        });
        Ok(Collector { task, received })
    }

    /// Wait for the collector to finish.
    pub async fn finish(self) -> anyhow::Result<LatencyRecorder> {
        Ok(self.task.await?)
    }
}

/// Wait until `progress` reaches `n` (or stalls for `stall`); returns the
/// instant the count first moved above `start_at` and the instant it reached
/// `n` (polled every 200 µs).
pub async fn wait_progress(
    progress: &AtomicU64,
    n: u64,
    stall: Duration,
) -> anyhow::Result<(Instant, Instant, u64)> {
    let initial = progress.load(Ordering::Relaxed);
    let mut first = None;
    let mut last_change = Instant::now();
    let mut last = initial;
    loop {
        let now_count = progress.load(Ordering::Relaxed);
        let now = Instant::now();
        if now_count != last {
            if first.is_none() {
                first = Some((now, last));
            }
            last = now_count;
            last_change = now;
        }
        if now_count >= n {
            let (t0, c0) = first.unwrap_or((now, initial));
            return Ok((t0, now, c0));
        }
        if now.duration_since(last_change) > stall {
            bail!("progress stalled at {now_count} of {n} events for {stall:?}");
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_json_with_its_stamp() {
        let p = payload(42, 123_456);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["seq"], 42);
        assert_eq!(v["quantity"], 1);
        assert_eq!(stamp_of(&p), Some(123_456));
        assert!(p.len() < 256, "{}", p.len());
    }

    #[test]
    fn derived_events_keep_the_stamp() {
        let mut v: serde_json::Value = serde_json::from_slice(&payload(1, 99)).unwrap();
        v["total"] = serde_json::json!(39.9);
        assert_eq!(stamp_of(&serde_json::to_vec(&v).unwrap()), Some(99));
        assert_eq!(stamp_of(b"not json"), None);
    }

    #[tokio::test]
    async fn progress_measures_from_first_movement() {
        let p = Arc::new(AtomicU64::new(0));
        let q = p.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            for _ in 0..10 {
                q.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let (t0, t1, c0) = wait_progress(&p, 10, Duration::from_secs(2)).await.unwrap();
        assert!(t1 > t0);
        assert_eq!(c0, 0);
        let stalled = AtomicU64::new(0);
        assert!(
            wait_progress(&stalled, 1, Duration::from_millis(30))
                .await
                .is_err()
        );
    }
}
