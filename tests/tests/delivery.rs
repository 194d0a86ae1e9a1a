//! Delivery guarantees end to end: JetStream at-least-once with Nak-delay
//! retries, dedup by idempotency key, dead-lettering with full context and
//! replay, and no loss or duplicate side effect across a `kill -9`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use bytes::Bytes;
use sluice::dlq::{self, Filter};
use sluice_e2e::{
    NatsServer, PluginDir, Running, consumer_backlog, create_stream, eventually, eventually_async,
    read_stream, setup_done, start_host, stream_messages,
};

const WAIT: Duration = Duration::from_secs(30);

/// Poll an async condition every 20 ms until it holds or `timeout` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_jetstream_event_is_retried_with_nak_and_processed_once() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "DONE", &["jobs.*.done"]).await;
    let dir = PluginDir::new();
    dir.add(
        "flaky",
        "flaky",
        "subjects = [\"jobs.*\"]\npublish = [\"jobs.*.done\"]\nmode = \"jetstream\"\n\
         [jetstream]\nstream = \"JOBS\"\ncreate_stream = true\n\
         [retry]\nmax_attempts = 5\ninitial_delay = \"20ms\"\nmax_delay = \"100ms\"",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    // Deliveries are counted: none may be handed back while the KV bucket opens.
    setup_done(&host).await;

    let mut headers = HeaderMap::new();
    headers.insert("x-fail-times", "2");
    js.publish_with_headers("jobs.resize", headers, Bytes::from_static(b"img"))
        .await
        .unwrap()
        .await
        .unwrap();

    eventually(WAIT, "the flaky event succeeds", || {
        host.stats("flaky").unwrap().succeeded == 1
    })
    .await;
    eventually_async!(
        WAIT,
        "the event is acked",
        consumer_backlog(&js, "JOBS", "sluice-flaky").await == (0, 0)
    );
    let stats = host.stats("flaky").unwrap();
    // Three deliveries (attempts 1, 2, 3): two failed and were Nak'ed.
    assert_eq!(
        (stats.received, stats.failed_attempts, stats.retries),
        (3, 2, 2),
        "{stats:?}"
    );
    // The outbox: only the successful attempt published, confirmed by the stream.
    let done = read_stream(&js, "DONE").await;
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0]
            .headers
            .as_ref()
            .unwrap()
            .get("x-attempt")
            .unwrap()
            .as_str(),
        "3"
    );
    assert_eq!(stats.dead_lettered, 0);
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_events_are_dead_lettered_with_context_and_replay_processes_them_once() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "OUT", &["orders.enriched.>", "payments.*.ok"]).await;
    let dir = PluginDir::new();
    // The fault: enrich may not publish where it needs to, so every attempt fails (retryable).
    let enrich = |grant: &str| {
        format!(
            "subjects = [\"orders.created\"]\npublish = [\"{grant}\"]\nmode = \"jetstream\"\n\
             [jetstream]\nstream = \"ORDERS\"\ncreate_stream = true\n\
             [retry]\nmax_attempts = 3\ninitial_delay = \"10ms\"\nmax_delay = \"50ms\""
        )
    };
    dir.add("enrich", "enrich", &enrich("nope.>")).add(
        "reject",
        "reject",
        "subjects = [\"payments.*\"]\npublish = [\"payments.*.ok\"]\nmode = \"jetstream\"\n\
         [jetstream]\nstream = \"PAYMENTS\"\ncreate_stream = true",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let enrich_version = host
        .plugins()
        .into_iter()
        .find(|p| p.name == "enrich")
        .unwrap()
        .version
        .unwrap();

    let started = SystemTime::now();
    let mut headers = HeaderMap::new();
    headers.insert("x-custom", "kept");
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    let order = Bytes::from_static(br#"{"id":"o-7","quantity":2,"unit_price":3}"#);
    js.publish_with_headers("orders.created", headers, order.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish("payments.card", Bytes::from_static(b"not json"))
        .await
        .unwrap()
        .await
        .unwrap();

    eventually(WAIT, "both events dead-lettered", || {
        host.stats("enrich").unwrap().dead_lettered == 1
            && host.stats("reject").unwrap().dead_lettered == 1
    })
    .await;
    // Terminated only after the DLQ ack: nothing left pending in the sources.
    eventually_async!(WAIT, "sources settled", {
        consumer_backlog(&js, "ORDERS", "sluice-enrich").await == (0, 0)
            && consumer_backlog(&js, "PAYMENTS", "sluice-reject").await == (0, 0)
    });

    let entries = dlq::list(&js, "SLUICE_DLQ", &Filter::default())
        .await
        .unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let e = &entries
        .iter()
        .find(|e| e.letter.plugin == "enrich")
        .unwrap()
        .letter;
    assert_eq!(e.subject, "orders.created");
    assert_eq!(e.version, enrich_version);
    assert_eq!(e.payload, order);
    assert!(
        e.headers.contains(&("x-custom".into(), "kept".into())),
        "{:?}",
        e.headers
    );
    assert_eq!((e.stream.as_deref(), e.sequence), (Some("ORDERS"), Some(1)));
    assert_eq!(e.attempts, 3);
    assert_eq!(e.error_class, "retryable");
    assert!(
        e.error.contains("not granted") && e.error.contains("orders.enriched.created"),
        "{}",
        e.error
    );
    // The key names the stream's identity (creation time) and the sequence.
    assert!(
        e.key.starts_with("ORDERS@") && e.key.ends_with(":1"),
        "{}",
        e.key
    );
    assert_eq!(e.trace_id, "0af7651916cd43dd8448eb211c80319c");
    let since_start = |t: SystemTime| {
        t.duration_since(started).is_ok()
            || started.duration_since(t).unwrap() < Duration::from_secs(1)
    };
    assert!(
        since_start(e.first_failure) && e.first_failure <= e.last_failure,
        "{e:?}"
    );
    let r = &entries
        .iter()
        .find(|e| e.letter.plugin == "reject")
        .unwrap()
        .letter;
    assert_eq!(
        (r.attempts, r.error_class.as_str()),
        (1, "permanent"),
        "a permanent error is not retried"
    );
    assert!(r.error.contains("not valid JSON"), "{}", r.error);
    assert_eq!(host.stats("reject").unwrap().failed_attempts, 1);

    // Fix the fault (grant the subject), restart, replay: processed once, with the original key.
    host.shutdown().await.unwrap();
    dir.write("enrich.toml", enrich("orders.enriched.>").as_bytes());
    let host = start_host(&nats.url(), dir.path()).await;
    let enrich_entries = dlq::list(
        &js,
        "SLUICE_DLQ",
        &Filter {
            plugin: Some("enrich".into()),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(enrich_entries.len(), 1);
    dlq::replay_one(&client, &js, "SLUICE_DLQ", &enrich_entries[0])
        .await
        .unwrap();
    eventually_async!(
        WAIT,
        "the replayed order is enriched",
        stream_messages(&js, "OUT").await == 1
    );
    eventually(WAIT, "enrich succeeded", || {
        host.stats("enrich").unwrap().succeeded == 1
    })
    .await;
    let out = read_stream(&js, "OUT").await;
    let body: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(body["id"], "o-7");
    assert_eq!(
        body["idempotency_key"].as_str(),
        Some(e.key.as_str()),
        "the replay keeps the original key"
    );
    let left = dlq::list(&js, "SLUICE_DLQ", &Filter::default())
        .await
        .unwrap();
    assert_eq!(
        left.len(),
        1,
        "the replayed entry is removed, the other kept"
    );
    assert_eq!(left[0].letter.plugin, "reject");
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_twice_is_handled_once_in_jetstream_mode() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "MIRRORED", &["mirror.>"]).await;
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"in.>\"]\npublish = [\"mirror.>\"]\nmode = \"jetstream\"\n\
         [jetstream]\nstream = \"IN\"\ncreate_stream = true\n[idempotency]\nkey = \"header:x-order-id\"",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    // Deliveries are counted: none may be handed back while the KV bucket opens.
    setup_done(&host).await;
    // Distinct Nats-Msg-Ids (so the stream keeps both), one business key.
    for id in ["a", "b"] {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", id);
        h.insert("x-order-id", "order-1");
        js.publish_with_headers("in.orders", h, Bytes::from_static(b"x"))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    eventually_async!(
        WAIT,
        "both deliveries settled",
        consumer_backlog(&js, "IN", "sluice-mirror").await == (0, 0)
    );
    let stats = host.stats("mirror").unwrap();
    // If the second arrived while the first was in progress, it met the lease
    // and was redelivered (one more delivery) before hitting the record.
    assert_eq!((stats.succeeded, stats.dedup_hits), (1, 1), "{stats:?}");
    assert_eq!(stats.received, 2 + stats.lease_conflicts, "{stats:?}");
    assert_eq!(stream_messages(&js, "MIRRORED").await, 1);
    let out = read_stream(&js, "MIRRORED").await;
    assert_eq!(
        out[0]
            .headers
            .as_ref()
            .unwrap()
            .get("x-idempotency-key")
            .unwrap()
            .as_str(),
        "order-1"
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_duplicates_no_side_effect() {
    const EVENTS: usize = 10_000;
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "K9OUT", &["k9.enriched.>"]).await;
    let dir = PluginDir::new();
    dir.add(
        "enrich",
        "enrich",
        "subjects = [\"k9.created\"]\npublish = [\"k9.enriched.>\"]\nmode = \"jetstream\"\ntimeout = \"2s\"\n\
         max_concurrency = 32\n[jetstream]\nstream = \"K9\"\ncreate_stream = true\nack_wait = \"4s\"",
    );
    let spawn = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-e2e-host"));
        cmd.args([
            "run",
            "--nats-url",
            &nats.url(),
            "--log",
            "warn,sluice::service=info",
            "--plugins",
        ])
        .arg(dir.path())
        .env_remove("RUST_LOG");
        let host = Running::spawn(cmd);
        host.wait_for("sluice is serving", Duration::from_secs(60));
        host
    };
    let host = spawn();

    let mut acks = Vec::with_capacity(500);
    for i in 0..EVENTS {
        let body = format!(r#"{{"id":"k-{i}","quantity":1,"unit_price":1}}"#);
        acks.push(js.publish("k9.created", Bytes::from(body)).await.unwrap());
        if acks.len() == 500 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    eventually_async!(
        Duration::from_secs(120),
        "a good part of the events handled",
        stream_messages(&js, "K9OUT").await >= 2_000
    );
    host.kill_9();
    let killed_at = stream_messages(&js, "K9OUT").await;
    assert!(
        killed_at < EVENTS as u64,
        "the kill must land mid-stream ({killed_at})"
    );

    let host = spawn();
    eventually_async!(
        Duration::from_secs(240),
        "every event handled after the restart",
        {
            stream_messages(&js, "K9OUT").await == EVENTS as u64
                && consumer_backlog(&js, "K9", "sluice-enrich").await == (0, 0)
        }
    );
    // Exactly one side effect per event: no loss, and the duplicates a redelivery
    // produced were dropped downstream by their deterministic Nats-Msg-Id.
    let out = read_stream(&js, "K9OUT").await;
    let ids: BTreeSet<String> = out
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(out.len(), EVENTS);
    assert_eq!(ids.len(), EVENTS, "every event exactly once");
    assert!(host.terminate().success());
    eprintln!("kill -9 landed after {killed_at} of {EVENTS} side effects");
}
