//! Criterion: the host-side pieces of the per-event dispatch path that are
//! public: idempotency key derivation (content hash, Nats-Msg-Id, stream
//! sequence), outgoing message ids, the retry decision, publish grant checks,
//! and the per-event metrics updates (label allocation).
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::delivery::RetryPolicy;
use sluice::delivery::key::{KeyInput, StreamPosition, derive_key, outgoing_msg_id};
use sluice::manifest::KeySource;
use sluice::subject::PublishGrants;
use sluice::telemetry::metrics::Metrics;

fn dispatch(c: &mut Criterion) {
    let payload = sluice_bench::load::payload(42, 0);
    let no_headers = |_: &str| None;
    let msg_id = |h: &str| (h == "Nats-Msg-Id").then(|| "order-42".to_string());
    let mut g = c.benchmark_group("idempotency key");
    g.bench_function("core per-message key (the default)", |b| {
        b.iter(|| {
            derive_key(black_box(&KeyInput {
                subject: "bench.orders",
                reply: None,
                payload: &payload,
                header: &no_headers,
                position: None,
                source: None,
                hash_headers: &[],
            }))
        })
    });
    g.bench_function(
        "core content hash (opt-in; sha256 of subject+payload)",
        |b| {
            b.iter(|| {
                derive_key(black_box(&KeyInput {
                    subject: "bench.orders",
                    reply: None,
                    payload: &payload,
                    header: &no_headers,
                    position: None,
                    source: Some(&KeySource::ContentHash),
                    hash_headers: &[],
                }))
            })
        },
    );
    g.bench_function("Nats-Msg-Id header", |b| {
        b.iter(|| {
            derive_key(black_box(&KeyInput {
                subject: "bench.orders",
                reply: None,
                payload: &payload,
                header: &msg_id,
                position: None,
                source: None,
                hash_headers: &[],
            }))
        })
    });
    g.bench_function("JetStream stream identity and sequence", |b| {
        b.iter(|| {
            derive_key(black_box(&KeyInput {
                subject: "bench.orders",
                reply: None,
                payload: &payload,
                header: &no_headers,
                position: Some(StreamPosition {
                    stream: "BENCH",
                    created_ms: 1_733_000_000_000,
                    sequence: 123_456,
                }),
                source: None,
                hash_headers: &[],
            }))
        })
    });
    g.finish();

    c.bench_function("outgoing Nats-Msg-Id", |b| {
        b.iter(|| outgoing_msg_id(black_box("BENCH:123456"), black_box("enrich"), 0))
    });
    let policy = RetryPolicy::default();
    c.bench_function("retry decision", |b| {
        b.iter(|| {
            let bound = policy.bound(black_box(3));
            policy.should_retry(3, Duration::from_secs(2), bound)
        })
    });
    let grants = PublishGrants::new(vec!["orders.enriched.>".into(), "audit.*".into()]);
    c.bench_function("publish grant check", |b| {
        b.iter(|| grants.check(black_box("orders.enriched.created")).is_ok())
    });
    let metrics = Metrics::new();
    metrics.plugin_registered("enrich");
    let handles = metrics.for_plugin("enrich");
    c.bench_function("metrics per event (received, attempt, handled)", |b| {
        b.iter(|| {
            handles.event_received();
            let in_flight = handles.attempt_started();
            handles.handled_ok(black_box(Duration::from_micros(40)));
            drop(in_flight);
        })
    });
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
