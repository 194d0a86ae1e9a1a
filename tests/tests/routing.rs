//! Core NATS routing end to end: subjects to plugins, derived events, the
//! outbox, payload and header fidelity, and bad plugins next to good ones.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use sluice_e2e::{NatsServer, PluginDir, eventually, next_message, setup_done, start_host};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_routed_by_subject_wildcard_to_the_right_plugin() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "orders",
        "mirror",
        "subjects = [\"orders.*\"]\npublish = [\"mirror.>\"]",
    )
    .add(
        "payments",
        "mirror",
        "subjects = [\"payments.>\"]\npublish = [\"mirror.>\"]",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut mirrored = client.subscribe("mirror.>").await.unwrap();
    client.flush().await.unwrap();

    // orders.* matches one token only; payments.> matches any depth.
    for subject in [
        "orders.created",
        "orders.created.eu",
        "payments.card.eu",
        "other.thing",
    ] {
        client
            .publish(subject, Bytes::from_static(b"{}"))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(
            next_message(&mut mirrored, WAIT, "mirrored event")
                .await
                .subject
                .to_string(),
        );
    }
    seen.sort();
    assert_eq!(
        seen,
        vec!["mirror.orders.created", "mirror.payments.card.eu"]
    );
    eventually(WAIT, "both plugins settled", || {
        host.stats("orders").unwrap().succeeded == 1
            && host.stats("payments").unwrap().succeeded == 1
    })
    .await;
    assert_eq!(
        host.stats("orders").unwrap().received,
        1,
        "orders.created.eu must not match orders.*"
    );
    // Nothing else arrives: the unmatched subjects reached no plugin.
    client.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), mirrored.next())
            .await
            .is_err()
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_publishes_a_derived_event_once_per_msg_id_with_a_deterministic_id() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "enrich",
        "enrich",
        "subjects = [\"orders.created\"]\npublish = [\"orders.enriched.>\"]",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    // A core event handled before the KV bucket opens has no record to
    // find the duplicate by.
    setup_done(&host).await;
    let client = nats.client().await;
    let mut derived = client.subscribe("orders.enriched.>").await.unwrap();
    client.flush().await.unwrap();

    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-42");
    let order = br#"{"id":"o-42","quantity":4,"unit_price":2.5}"#;
    client
        .publish_with_headers("orders.created", headers.clone(), Bytes::from_static(order))
        .await
        .unwrap();
    let msg = next_message(&mut derived, WAIT, "enriched order").await;
    assert_eq!(msg.subject.as_str(), "orders.enriched.created");
    let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(body["id"], "o-42");
    assert_eq!(body["total"], 10.0);
    assert_eq!(body["enriched_by"], "sluice/enrich");
    assert_eq!(
        body["idempotency_key"], "order-42",
        "Nats-Msg-Id is the idempotency key"
    );
    let first_id = msg
        .headers
        .as_ref()
        .unwrap()
        .get("Nats-Msg-Id")
        .unwrap()
        .to_string();
    assert!(first_id.starts_with("sluice-"), "{first_id}");

    assert_eq!(
        first_id,
        sluice::delivery::outgoing_msg_id("order-42", "enrich", 0)
    );

    // The same event again (same Nats-Msg-Id) is a dedup hit: not handled twice.
    client
        .publish_with_headers("orders.created", headers, Bytes::from_static(order))
        .await
        .unwrap();
    eventually(WAIT, "the duplicate is recognised", || {
        host.stats("enrich").unwrap().dedup_hits == 1
    })
    .await;
    client.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), derived.next())
            .await
            .is_err()
    );
    let stats = host.stats("enrich").unwrap();
    assert_eq!(
        (stats.received, stats.succeeded, stats.published),
        (2, 1, 1),
        "{stats:?}"
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handler_publishes_nothing_and_retries_publish_once() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "flaky",
        "flaky",
        "subjects = [\"jobs.*\"]\npublish = [\"jobs.*.done\"]\n[retry]\nmax_attempts = 3\ninitial_delay = \"10ms\"\nmax_delay = \"50ms\"",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut done = client.subscribe("jobs.*.done").await.unwrap();
    client.flush().await.unwrap();

    // Fails on every attempt: three attempts, each publishing in its outbox,
    // none of which may reach NATS.
    let mut always = HeaderMap::new();
    always.insert("x-fail-times", "100");
    client
        .publish_with_headers("jobs.doomed", always, Bytes::new())
        .await
        .unwrap();
    eventually(WAIT, "the doomed job is given up", || {
        host.stats("flaky").unwrap().gave_up == 1
    })
    .await;
    assert_eq!(host.stats("flaky").unwrap().failed_attempts, 3);

    // Fails twice then succeeds: exactly one publish, from attempt 3.
    let mut twice = HeaderMap::new();
    twice.insert("x-fail-times", "2");
    client
        .publish_with_headers("jobs.flaky", twice, Bytes::from_static(b"x"))
        .await
        .unwrap();
    let msg = next_message(&mut done, WAIT, "the flaky job's publish").await;
    assert_eq!(msg.subject.as_str(), "jobs.flaky.done");
    assert_eq!(
        msg.headers
            .as_ref()
            .unwrap()
            .get("x-attempt")
            .unwrap()
            .as_str(),
        "3"
    );
    eventually(WAIT, "flaky job settled", || {
        host.stats("flaky").unwrap().succeeded == 1
    })
    .await;
    client.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), done.next())
            .await
            .is_err(),
        "failed attempts must not publish"
    );
    let stats = host.stats("flaky").unwrap();
    assert_eq!((stats.retries, stats.published), (4, 1), "{stats:?}");
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_bytes_and_headers_round_trip_exactly() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"in.>\"]\npublish = [\"mirror.>\"]",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut out = client.subscribe("mirror.>").await.unwrap();
    client.flush().await.unwrap();

    let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    let cases: Vec<(&str, Bytes)> = vec![
        (
            "in.binary",
            Bytes::from_static(&[0xff, 0x00, 0xfe, 0x80, b'\n']),
        ),
        ("in.empty", Bytes::new()),
        ("in.mebibyte", Bytes::from(big.clone())),
    ];
    for (subject, payload) in &cases {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", "acme");
        headers.append("x-tag", "a");
        headers.append("x-tag", "b");
        headers.insert("X-Mixed-Case", "Value with spaces");
        client
            .publish_with_headers(*subject, headers, payload.clone())
            .await
            .unwrap();
        let msg = next_message(&mut out, WAIT, subject).await;
        assert_eq!(msg.subject.as_str(), format!("mirror.{subject}"));
        assert_eq!(msg.payload.len(), payload.len(), "{subject}: payload size");
        assert!(msg.payload == *payload, "{subject}: payload bytes differ");
        let h = msg.headers.as_ref().unwrap();
        assert_eq!(h.get("x-tenant").unwrap().as_str(), "acme");
        let tags: Vec<&str> = h.get_all("x-tag").map(|v| v.as_str()).collect();
        assert_eq!(
            tags,
            vec!["a", "b"],
            "{subject}: repeated header values in order"
        );
        assert_eq!(h.get("X-Mixed-Case").unwrap().as_str(), "Value with spaces");
        assert_eq!(h.get("x-attempt").unwrap().as_str(), "1");
        assert!(
            h.get("x-idempotency-key")
                .unwrap()
                .as_str()
                .starts_with("msg-"),
            "a core event without an id gets a per-message key"
        );
    }
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugins_are_reported_and_good_ones_keep_serving() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    let good = "subjects = [\"good.>\"]\npublish = [\"mirror.>\"]";
    let any = "subjects = [\"bad.>\"]";
    dir.add("good", "mirror", good)
        .add("wrongworld", "wrong-world", any)
        .write("garbage.wasm", b"this is not wasm at all")
        .write("garbage.toml", any.as_bytes())
        .write("coremodule.wasm", b"\0asm\x01\0\0\0")
        .write("coremodule.toml", any.as_bytes())
        .add("nomanifest", "echo", any)
        .add(
            "unknownkey",
            "echo",
            "subjects = [\"bad.>\"]\nsubjetcs = [\"typo\"]",
        )
        .add("badsubject", "echo", "subjects = [\"bad..subject\"]")
        .add("malformed", "echo", "subjects = [\"bad.>\"");
    std::fs::remove_file(dir.path().join("nomanifest.toml")).unwrap();
    let copy = std::fs::read(sluice_e2e::plugin_wasm("echo")).unwrap();
    dir.write("truncated.wasm", &copy[..copy.len() / 2])
        .write("truncated.toml", any.as_bytes());

    let host = start_host(&nats.url(), dir.path()).await;
    // Files just written may still be arriving: failures are reported once they settle.
    eventually(WAIT, "every bad plugin reported", || {
        host.plugins()
            .iter()
            .filter(|s| s.state == "failed")
            .count()
            == 8
    })
    .await;
    let status = host.plugins();
    let reason = |name: &str| -> String {
        let s = status
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} has a status"));
        assert_eq!(s.state, "failed", "{name}: {s:?}");
        s.error.clone().unwrap()
    };
    let expect = [
        ("wrongworld", "does not implement the sluice world"),
        ("garbage", "not a WebAssembly file"),
        ("coremodule", "core WebAssembly module, not a component"),
        ("nomanifest", "nomanifest.toml: missing"),
        ("unknownkey", "subjetcs"),
        ("badsubject", "subjects[0]"),
        ("malformed", "malformed.toml"),
        ("truncated", "not a valid component"),
    ];
    for (name, needle) in expect {
        let why = reason(name);
        assert!(
            why.contains(needle),
            "{name}: expected `{needle}` in: {why}"
        );
    }
    assert_eq!(
        status.iter().find(|s| s.name == "good").unwrap().state,
        "serving"
    );

    let client = nats.client().await;
    let mut out = client.subscribe("mirror.>").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("good.one", Bytes::from_static(b"ok"))
        .await
        .unwrap();
    let msg = next_message(&mut out, WAIT, "the good plugin still serves").await;
    assert_eq!(msg.subject.as_str(), "mirror.good.one");
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_outside_the_grants_fails_the_event_and_publishes_nothing() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    // enrich publishes to orders.enriched.*, which this manifest does not grant.
    dir.add(
        "enrich",
        "enrich",
        "subjects = [\"orders.created\"]\npublish = [\"elsewhere.>\"]\n[retry]\nmax_attempts = 2\ninitial_delay = \"5ms\"",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut any = client.subscribe("orders.enriched.>").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("orders.created", Bytes::from_static(br#"{"id":"x"}"#))
        .await
        .unwrap();
    eventually(WAIT, "event given up", || {
        host.stats("enrich").unwrap().gave_up == 1
    })
    .await;
    assert_eq!(host.stats("enrich").unwrap().published, 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), any.next())
            .await
            .is_err()
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_shares_events_between_hosts() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"work.>\"]\nqueue_group = \"workers\"\npublish = [\"mirror.>\"]",
    );
    let a = start_host(&nats.url(), dir.path()).await;
    let b = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut out = client.subscribe("mirror.>").await.unwrap();
    client.flush().await.unwrap();
    let n = 200;
    for i in 0..n {
        client
            .publish(format!("work.{i}"), Bytes::new())
            .await
            .unwrap();
    }
    for _ in 0..n {
        next_message(&mut out, WAIT, "shared work").await;
    }
    // Counted once the outbox is published, a moment after it arrives.
    eventually(WAIT, "every event counted by one host", || {
        a.stats("mirror").unwrap().succeeded + b.stats("mirror").unwrap().succeeded >= n
    })
    .await;
    let (sa, sb) = (
        a.stats("mirror").unwrap().succeeded,
        b.stats("mirror").unwrap().succeeded,
    );
    assert_eq!(sa + sb, n, "each event handled by exactly one host");
    assert!(sa > 0 && sb > 0, "both hosts got work: {sa} / {sb}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
