//! The delivery core under faults: one regression test per way an event was
//! lost, duplicated or stuck before the settlement state machine and the
//! self-contained triggers (see docs/delivery.md, "Faults and what happens").
//! Every test runs a real nats-server and polls for its conditions.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use sluice::dlq::{self, Filter};
use sluice::engine::invoke::FailureClass;
use sluice_e2e::fault_proxy::FaultProxy;
use sluice_e2e::{
    NatsServer, PluginDir, consumer_backlog, create_stream, eventually, eventually_async, http_get,
    read_stream, setup_done, start_host_configured, start_host_then_add, stream_messages,
};

const WAIT: Duration = Duration::from_secs(30);

async fn js_publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    headers: &[(&str, &str)],
    body: &str,
) {
    let mut h = HeaderMap::new();
    for (name, value) in headers {
        h.insert(*name, *value);
    }
    js.publish_with_headers(subject.to_string(), h, Bytes::from(body.to_string()))
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Failure 1: a half-open breaker whose probe ends in a permanent error
/// released no probe slot, and the plugin stopped for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_ending_in_a_permanent_error_does_not_stop_the_plugin() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    create_stream(&js, "PROBED", &["probe.*"]).await;
    create_stream(&js, "PROBEOUT", &["probe.*.done"]).await;
    let manifest = "subjects = [\"probe.*\"]\npublish = [\"probe.*.done\"]\nmode = \"jetstream\"\nmax_concurrency = 1\n\
         [jetstream]\nstream = \"PROBED\"\n\
         [retry]\nmax_attempts = 1\n\
         [breaker]\nconsecutive_failures = 2\ncool_down = \"300ms\"\nmax_cool_down = \"300ms\"";
    // Two failures open the breaker (permanent errors between them neither
    // count nor reset the count); the events after them fail permanently, so
    // the first probe after the cool-down does too; then twenty good events.
    for i in 0..2 {
        let body = format!("bad-{i}");
        js_publish(&js, "probe.bad", &[("x-fail-times", "9")], &body).await;
    }
    for i in 0..10 {
        let body = format!("poison-{i}");
        js_publish(&js, "probe.poison", &[("x-permanent", "1")], &body).await;
    }
    for i in 0..20 {
        js_publish(&js, "probe.good", &[], &format!("good-{i}")).await;
    }
    // A failure handed back while the KV bucket opens would come back late,
    // after a success had reset the breaker's count.
    let dir = PluginDir::new();
    let host = start_host_then_add(&nats.url(), &dir, ("flaky", "flaky", manifest)).await;
    eventually(
        WAIT,
        "good events handled, the others dead-lettered",
        || {
            let s = host.stats("flaky").unwrap();
            s.succeeded == 20 && s.dead_lettered == 12
        },
    )
    .await;
    let stats = host.stats("flaky").unwrap();
    assert!(stats.breaker_opened >= 1, "{stats:?}");
    host.shutdown().await.unwrap();
}

/// Failure 2: core events waiting in `core_buffer` were discarded without a
/// word on SIGTERM. Now they are handled within the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_core_events_are_handled_within_the_grace_at_shutdown() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "BUFOUT", &["buf.*.done"]).await;
    let dir = PluginDir::new();
    dir.add(
        "slow",
        "slow",
        "subjects = [\"buf.*\"]\npublish = [\"buf.*.done\"]\nmax_concurrency = 1\ncore_buffer = 100",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "shutdown_grace = \"30s\"").await;
    let mut headers = HeaderMap::new();
    headers.insert("x-sleep-ms", "100");
    for i in 0..20 {
        client
            .publish_with_headers(format!("buf.e{i}"), headers.clone(), Bytes::from("x"))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    eventually(WAIT, "all twenty received and the first started", || {
        let s = host.stats("slow").unwrap();
        s.received >= 1 && s.succeeded >= 1
    })
    .await;
    let stats = host.stats("slow").unwrap();
    assert!(
        stats.succeeded < 20,
        "the test needs events still buffered at SIGTERM: {stats:?}"
    );
    host.shutdown().await.unwrap();
    // The outputs are core publishes the stream stores as the server reads
    // them: the last may land a moment after the host closed.
    eventually_async!(
        WAIT,
        "every buffered event was handled before exit",
        stream_messages(&js, "BUFOUT").await == 20
    );
}

/// Failure 2, the other half: what the grace cannot cover is dead-lettered
/// with class `shutdown` and counted, never dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_events_left_at_the_deadline_are_dead_lettered_with_class_shutdown() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "LEFTOUT", &["left.*.done"]).await;
    let dir = PluginDir::new();
    dir.add(
        "slow",
        "slow",
        "subjects = [\"left.*\"]\npublish = [\"left.*.done\"]\nmax_concurrency = 1\ncore_buffer = 100\ntimeout = \"10s\"",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "shutdown_grace = \"1s\"").await;
    let mut headers = HeaderMap::new();
    headers.insert("x-sleep-ms", "400");
    for i in 0..10 {
        client
            .publish_with_headers(format!("left.e{i}"), headers.clone(), Bytes::from("x"))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    eventually(WAIT, "the first event started", || {
        host.stats("slow").unwrap().received >= 1
    })
    .await;
    let stats_handle = host.registry();
    host.shutdown().await.unwrap();
    let stats = stats_handle.stats("slow").unwrap();
    // The outputs are core publishes the stream stores as the server reads
    // them: the last may land a moment after the host closed.
    eventually_async!(
        WAIT,
        "every output the host published is stored",
        stream_messages(&js, "LEFTOUT").await >= stats.published
    );
    let handled = stream_messages(&js, "LEFTOUT").await;
    let letters = dlq::list(&js, "SLUICE_DLQ", &Filter::default())
        .await
        .unwrap();
    assert!(handled < 10, "the grace of 1s cannot cover 4s of work");
    assert_eq!(
        handled + letters.len() as u64,
        10,
        "handled or dead-lettered, none lost: {stats:?}"
    );
    assert!(
        letters.iter().all(|l| l.letter.error_class == "shutdown"),
        "{letters:?}"
    );
    assert_eq!(
        stats.gave_up_by.get(FailureClass::Shutdown),
        letters.len() as u64,
        "{stats:?}"
    );
}

/// Stopping while a burst the server already sent is still on its way: the
/// subscription is drained (UNSUB, then what had arrived is read), so every
/// event the server routed to the host before the stop is handled or
/// dead-lettered with class `shutdown`, none dropped with the subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_events_in_flight_when_the_host_stops_are_handled_or_dead_lettered() {
    const EVENTS: u64 = 200;
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "INFLIGHTOUT", &["inflight.*.done"]).await;
    let dir = PluginDir::new();
    dir.add(
        "slow",
        "slow",
        "subjects = [\"inflight.*\"]\npublish = [\"inflight.*.done\"]\nmax_concurrency = 2\ncore_buffer = 1000\ntimeout = \"10s\"",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "shutdown_grace = \"300ms\"").await;
    setup_done(&host).await;
    let mut headers = HeaderMap::new();
    headers.insert("x-sleep-ms", "20");
    for i in 0..EVENTS {
        client
            .publish_with_headers(format!("inflight.e{i}"), headers.clone(), Bytes::from("x"))
            .await
            .unwrap();
    }
    // Once the server echoes a probe sent after them, it has routed all of
    // them to the host: they are in the host's socket or already read.
    sluice::nats::sync::synced(&client, Duration::from_secs(5))
        .await
        .unwrap();
    let stats_handle = host.registry();
    host.shutdown().await.unwrap();
    let stats = stats_handle.stats("slow").unwrap();
    // The outputs are core publishes the stream stores as the server reads
    // them: the last may land a moment after the host closed.
    eventually_async!(
        WAIT,
        "every output the host published is stored",
        stream_messages(&js, "INFLIGHTOUT").await >= stats.published
    );
    let handled = stream_messages(&js, "INFLIGHTOUT").await;
    let letters = dlq::list(&js, "SLUICE_DLQ", &Filter::default())
        .await
        .unwrap();
    assert!(
        handled < EVENTS,
        "a grace of 300ms cannot cover 2s of work: {stats:?}"
    );
    assert_eq!(
        handled + letters.len() as u64,
        EVENTS,
        "every event the server sent before the stop is handled or dead-lettered: {stats:?}"
    );
    assert!(
        letters.iter().all(|l| l.letter.error_class == "shutdown"),
        "{letters:?}"
    );
    assert_eq!(
        stats.gave_up_by.get(FailureClass::Shutdown),
        letters.len() as u64,
        "{stats:?}"
    );
}

/// Failure 3: a JetStream event waiting for an instance longer than
/// `ack_wait` was redelivered and ran twice at once. In-progress acks keep
/// the server's timer alive, and the lease starts with the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_for_an_instance_never_runs_an_event_twice() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    create_stream(&js, "WAITOUT", &["wait.*.done"]).await;
    let dir = PluginDir::new();
    dir.add(
        "slow",
        "slow",
        "subjects = [\"wait.*\"]\npublish = [\"wait.*.done\"]\nmode = \"jetstream\"\ntimeout = \"1s\"\nmax_concurrency = 8\n\
         [jetstream]\nstream = \"WAIT\"\ncreate_stream = true\nack_wait = \"2s\"",
    );
    // One instance for the whole host: eight events of 600 ms queue for it
    // for up to 4.8 s, well past ack_wait.
    let host = start_host_configured(&nats.url(), dir.path(), "max_instances = 1").await;
    // Deliveries are counted: none may be handed back while the KV bucket opens.
    setup_done(&host).await;
    for i in 0..8 {
        js_publish(&js, &format!("wait.e{i}"), &[("x-sleep-ms", "600")], "x").await;
    }
    eventually(WAIT, "all eight handled", || {
        host.stats("slow").unwrap().succeeded >= 8
    })
    .await;
    eventually_async!(
        WAIT,
        "all acked",
        consumer_backlog(&js, "WAIT", "sluice-slow").await == (0, 0)
    );
    let stats = host.stats("slow").unwrap();
    assert_eq!(
        (stats.received, stats.succeeded),
        (8, 8),
        "no redelivery, no second run: {stats:?}"
    );
    host.shutdown().await.unwrap();
}

/// An explicit `ack_wait` shorter than one attempt is refused with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_wait_shorter_than_the_timeout_is_refused_naming_both_keys() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "slow",
        "slow",
        "subjects = [\"short.*\"]\nmode = \"jetstream\"\ntimeout = \"5s\"\n[jetstream]\nstream = \"SHORT\"\ncreate_stream = true\nack_wait = \"2s\"",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "").await;
    let status = host
        .plugins()
        .into_iter()
        .find(|p| p.name == "slow")
        .unwrap();
    assert_eq!(status.state, "failed");
    let error = status.error.unwrap_or_default();
    assert!(
        error.contains("jetstream.ack_wait") && error.contains("timeout"),
        "{error}"
    );
    host.shutdown().await.unwrap();
}

/// Failure 4: while the DLQ was unavailable, a given-up event came back and
/// its handler ran again every 2 s. Now only the dead-letter publish is
/// retried, by this host and by the next one after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_dlq_down_only_the_dead_letter_is_retried_never_the_handler() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    create_stream(&js, "PAYOUT", &["pay.*.done"]).await;
    let dir = PluginDir::new();
    dir.add(
        "flaky",
        "flaky",
        "subjects = [\"pay.*\"]\npublish = [\"pay.*.done\"]\nmode = \"jetstream\"\n[jetstream]\nstream = \"PAY\"\ncreate_stream = true",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "dlq_stream = \"DEADQ\"").await;
    eventually_async!(
        WAIT,
        "the DLQ stream exists",
        js.get_stream("DEADQ").await.is_ok()
    );
    // The DLQ stops capturing dead letters: every publish to it fails.
    let dlq_capturing = |subjects: &[&str]| async_nats::jetstream::stream::Config {
        name: "DEADQ".into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    js.update_stream(dlq_capturing(&["not.the.dlq"]))
        .await
        .unwrap();

    js_publish(&js, "pay.p1", &[("x-permanent", "1")], "p1").await;
    eventually(WAIT, "the dead letter failed several times", || {
        host.stats("flaky").unwrap().dlq_failures >= 3
    })
    .await;
    assert_eq!(
        host.stats("flaky").unwrap().failed_attempts,
        1,
        "the handler ran once"
    );
    // A restart while the DLQ is still down: the next host owes the dead
    // letter too, and still never runs the handler.
    host.shutdown().await.unwrap();
    let host = start_host_configured(&nats.url(), dir.path(), "dlq_stream = \"DEADQ\"").await;
    eventually(WAIT, "the second host tried the dead letter", || {
        host.stats("flaky").unwrap().dlq_failures >= 1
    })
    .await;
    // The operator fixes the DLQ.
    js.update_stream(dlq_capturing(&["sluice.dlq.>"]))
        .await
        .unwrap();
    eventually(WAIT, "dead-lettered", || {
        host.stats("flaky").unwrap().dead_lettered == 1
    })
    .await;
    let stats = host.stats("flaky").unwrap();
    assert_eq!(
        stats.failed_attempts, 0,
        "the second host never ran the handler: {stats:?}"
    );
    let letters = dlq::list(&js, "DEADQ", &Filter::default()).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].letter.error_class.as_str(),
            letters[0].letter.attempts
        ),
        ("permanent", 1)
    );
    eventually_async!(
        WAIT,
        "terminated",
        consumer_backlog(&js, "PAY", "sluice-flaky").await == (0, 0)
    );
    host.shutdown().await.unwrap();
}

/// Failure 6: a stream deleted and created again restarts its sequences,
/// and the new events' keys hit the old `completed` records: silent loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_and_recreated_under_the_host_loses_nothing() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    // The mirror's confirmed publishes land in a stream: with only the test's
    // core subscriber on the subject, no ack could come, and the attempt fail.
    create_stream(&js, "MIRRORED", &["mirror.>"]).await;
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"re.in\"]\npublish = [\"mirror.>\"]\nmode = \"jetstream\"\n[jetstream]\nstream = \"RE\"\ncreate_stream = true",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "admin_addr = \"127.0.0.1:0\"").await;
    let admin = host.admin_addr().unwrap();
    let mut out = client.subscribe("mirror.re.in").await.unwrap();
    client.flush().await.unwrap();
    js_publish(&js, "re.in", &[], "first").await;
    let first = tokio::time::timeout(WAIT, out.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first.payload[..], b"first");

    js.delete_stream("RE").await.unwrap();
    eventually_async!(
        WAIT,
        "the vanished consumer is noticed and /readyz says so, or it is already recreated",
        {
            let metrics = http_get(admin, "/metrics").await.1;
            metrics.lines().any(|l| {
                l.starts_with("sluice_consumers_lost_total{plugin=\"mirror\"}")
                    && !l.ends_with(" 0")
            })
        }
    );
    eventually_async!(
        WAIT,
        "the host recreated the stream",
        js.get_stream("RE").await.is_ok()
    );
    eventually_async!(
        WAIT,
        "ready again",
        http_get(admin, "/readyz").await.0 == 200
    );
    // Sequence 1 again, in the new stream: handled, not skipped.
    js_publish(&js, "re.in", &[], "second").await;
    let second = tokio::time::timeout(WAIT, out.next())
        .await
        .expect("the new stream's first event is handled")
        .unwrap();
    assert_eq!(&second.payload[..], b"second");
    assert_eq!(host.stats("mirror").unwrap().dedup_hits, 0);
    host.shutdown().await.unwrap();
}

/// A confirmed outbox publish to a subject no stream captures, while a core
/// subscriber listens on it: the subscriber takes the publish, so the server
/// sends no "no responders", and the ack times out. That was taken for a
/// leader election and published again for 20 s (a copy to the subscriber
/// per try) before the attempt failed. Now the attempt fails once the ack
/// wait is over, with an error naming the subject and what to change, and
/// the subscriber got the one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_publish_only_a_core_subscriber_takes_fails_the_attempt_without_copies() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "COREOUT", &["coreout.in"]).await;
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"coreout.in\"]\npublish = [\"mirror.>\"]\nmode = \"jetstream\"\n\
         [retry]\nmax_attempts = 1\n[jetstream]\nstream = \"COREOUT\"",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "").await;
    let mut out = client.subscribe("mirror.coreout.in").await.unwrap();
    client.flush().await.unwrap();
    js_publish(&js, "coreout.in", &[], "once").await;
    eventually(
        WAIT,
        "the attempt failed and the event was dead-lettered",
        || host.stats("mirror").unwrap().dead_lettered == 1,
    )
    .await;
    let letters = dlq::list(&js, "SLUICE_DLQ", &Filter::default())
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    let error = &letters[0].letter.error;
    assert!(
        error.contains("`mirror.coreout.in`")
            && error.contains("a JetStream stream must capture the subject")
            && error.contains("confirm = false"),
        "the error names the subject and what to change: {error}"
    );
    // Every copy the host published went out before the attempt failed; a
    // marker sent now comes after them.
    client
        .publish("mirror.coreout.in", Bytes::from_static(b"marker"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut copies = 0;
    loop {
        let next = tokio::time::timeout(WAIT, out.next())
            .await
            .expect("the marker arrives")
            .unwrap();
        if &next.payload[..] == b"marker" {
            break;
        }
        assert_eq!(&next.payload[..], b"once");
        copies += 1;
    }
    assert_eq!(copies, 1, "one attempt, one copy to the core subscriber");
    host.shutdown().await.unwrap();
}

/// Failure 7: a manifest change of an existing durable consumer was
/// silently ignored. Now the consumer is updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_manifest_updates_the_durable_consumer() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "UPD", &["upd.>"]).await;
    create_stream(&js, "MIRRORED", &["mirror.>"]).await;
    let dir = PluginDir::new();
    let manifest = |subjects: &str| {
        format!(
            "subjects = [{subjects}]\npublish = [\"mirror.>\"]\nmode = \"jetstream\"\n[jetstream]\nstream = \"UPD\""
        )
    };
    dir.add("mirror", "mirror", &manifest("\"upd.a\""));
    let host = start_host_configured(&nats.url(), dir.path(), "").await;
    let mut out = client.subscribe("mirror.upd.*").await.unwrap();
    client.flush().await.unwrap();
    js_publish(&js, "upd.a", &[], "a").await;
    tokio::time::timeout(WAIT, out.next()).await.unwrap();

    dir.write("mirror.toml", manifest("\"upd.a\", \"upd.b\"").as_bytes());
    eventually_async!(WAIT, "the consumer now filters both subjects", {
        let stream = js.get_stream("UPD").await.unwrap();
        let info = stream.consumer_info("sluice-mirror").await.unwrap();
        info.config.filter_subjects.len() == 2
    });
    js_publish(&js, "upd.b", &[], "b").await;
    let b = tokio::time::timeout(WAIT, out.next())
        .await
        .expect("the new subject is consumed")
        .unwrap();
    assert_eq!(&b.payload[..], b"b");
    host.shutdown().await.unwrap();
}

/// Failures 8 and 15: core request/reply works, and two identical requests
/// (or two identical messages without an id) are two events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_core_requests_are_each_answered_and_identical_messages_each_handled() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let dir = PluginDir::new();
    dir.add("respond", "respond", "subjects = [\"svc.echo\"]")
        .add(
            "mirror",
            "mirror",
            "subjects = [\"reading.>\"]\npublish = [\"mirror.>\"]",
        );
    let host = start_host_configured(&nats.url(), dir.path(), "").await;
    for _ in 0..2 {
        let answer = tokio::time::timeout(WAIT, client.request("svc.echo", Bytes::from("ping")))
            .await
            .expect("answered in time")
            .expect("answered");
        assert_eq!(&answer.payload[..], b"re: ping");
    }
    // Counted once the answer is published, a moment after it arrives.
    eventually(WAIT, "both requests counted as handled", || {
        host.stats("respond").unwrap().succeeded == 2
    })
    .await;

    let mut out = client.subscribe("mirror.reading.t1").await.unwrap();
    client.flush().await.unwrap();
    for _ in 0..2 {
        client
            .publish("reading.t1", Bytes::from("21.5"))
            .await
            .unwrap();
    }
    let mut keys = BTreeSet::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(WAIT, out.next())
            .await
            .expect("both readings handled")
            .unwrap();
        keys.insert(
            m.headers
                .unwrap()
                .get("x-idempotency-key")
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(keys.len(), 2, "each reading has its own key: {keys:?}");
    host.shutdown().await.unwrap();
}

/// Failure 12: a KV bucket that cannot be opened at start no longer drops
/// the host to a private in-memory store for life: it retries, `/readyz`
/// says why, and JetStream events wait in their stream until it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_store_unavailable_at_start_is_retried_and_reported() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    // A stream squatting on the bucket's subjects: creating the bucket fails.
    create_stream(&js, "SQUAT", &["$KV.sluice-dedup.>"]).await;
    create_stream(&js, "KVOUT", &["kvw.*.done"]).await;
    let dir = PluginDir::new();
    dir.add(
        "flaky",
        "flaky",
        "subjects = [\"kvw.*\"]\npublish = [\"kvw.*.done\"]\nmode = \"jetstream\"\n[jetstream]\nstream = \"KVW\"\ncreate_stream = true",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "admin_addr = \"127.0.0.1:0\"").await;
    let admin = host.admin_addr().unwrap();
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("dedup store"), "{body}");
    js_publish(&js, "kvw.e1", &[], "x").await;
    eventually(
        WAIT,
        "the event was tried at least once and handed back",
        || host.stats("flaky").unwrap().received >= 1,
    )
    .await;
    assert_eq!(
        host.stats("flaky").unwrap().succeeded,
        0,
        "not handled without its dedup record"
    );
    js.delete_stream("SQUAT").await.unwrap();
    eventually_async!(
        WAIT,
        "ready once the bucket opens",
        http_get(admin, "/readyz").await.0 == 200
    );
    eventually(WAIT, "handled", || {
        host.stats("flaky").unwrap().succeeded == 1
    })
    .await;
    let out = read_stream(&js, "KVOUT").await;
    assert_eq!(
        out[0]
            .headers
            .as_ref()
            .unwrap()
            .get("x-attempt")
            .unwrap()
            .as_str(),
        "1",
        "waiting cost no attempt"
    );
    host.shutdown().await.unwrap();
}

/// Failure 13: deliveries that never ran the plugin (here: turned away by
/// an open breaker) counted as attempts. The plugin now sees real attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_turned_away_by_the_breaker_cost_no_attempt() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    create_stream(&js, "BRK", &["brk.*"]).await;
    create_stream(&js, "BRKOUT", &["brk.*.done"]).await;
    // The first event fails once, slowly, and opens the breaker; the events
    // pulled while it holds the one slot are turned away once it is open.
    // They are published only once its attempt runs, so the order does not
    // depend on which waiting task the runtime polls first.
    js_publish(
        &js,
        "brk.e0",
        &[("x-fail-times", "1"), ("x-fail-after-ms", "3000")],
        "x",
    )
    .await;
    let dir = PluginDir::new();
    let manifest = "subjects = [\"brk.*\"]\npublish = [\"brk.*.done\"]\nmode = \"jetstream\"\nmax_concurrency = 1\ntimeout = \"30s\"\n\
         [jetstream]\nstream = \"BRK\"\n\
         [retry]\nmax_attempts = 3\ninitial_delay = \"100ms\"\nmax_delay = \"200ms\"\n\
         [breaker]\nconsecutive_failures = 1\ncool_down = \"1s\"\nmax_cool_down = \"1s\"";
    let host = start_host_then_add(&nats.url(), &dir, ("flaky", "flaky", manifest)).await;
    eventually(WAIT, "the first event's attempt running", || {
        host.pool_usage().component_instances == 1
    })
    .await;
    for i in 1..6 {
        js_publish(&js, &format!("brk.e{i}"), &[], "x").await;
    }
    eventually_async!(
        WAIT,
        "another event delivered to the host while the first runs",
        consumer_backlog(&js, "BRK", "sluice-flaky").await.1 >= 2
    );
    assert_eq!(
        host.stats("flaky").unwrap().failed_attempts,
        0,
        "the first attempt must still be running when the others arrive"
    );
    eventually(WAIT, "all six handled", || {
        host.stats("flaky").unwrap().succeeded == 6
    })
    .await;
    let stats = host.stats("flaky").unwrap();
    assert!(
        stats.breaker_rejected >= 1,
        "the test needs turned-away deliveries: {stats:?}"
    );
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    let mut attempts: Vec<(String, String)> = read_stream(&js, "BRKOUT")
        .await
        .iter()
        .map(|m| {
            let attempt = m
                .headers
                .as_ref()
                .unwrap()
                .get("x-attempt")
                .unwrap()
                .to_string();
            (m.subject.to_string(), attempt)
        })
        .collect();
    attempts.sort();
    let expected: Vec<(String, String)> = (0..6)
        .map(|i| {
            (
                format!("brk.e{i}.done"),
                if i == 0 { "2" } else { "1" }.to_string(),
            )
        })
        .collect();
    assert_eq!(attempts, expected, "{stats:?}");
    host.shutdown().await.unwrap();
}

/// Failure 16: SIGTERM while NATS is unreachable never exited. Shutdown now
/// ends within the grace plus a bounded flush, whatever the broker does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_in_bounded_time_with_nats_unreachable() {
    let mut nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add("mirror", "mirror", "subjects = [\"gone.>\"]\npublish = [\"mirror.>\"]")
        .add(
            "flaky",
            "flaky",
            "subjects = [\"gonejs.*\"]\nmode = \"jetstream\"\n[jetstream]\nstream = \"GONE\"\ncreate_stream = true",
        );
    let host = start_host_configured(&nats.url(), dir.path(), "shutdown_grace = \"2s\"").await;
    nats.stop();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(15), host.shutdown())
        .await
        .expect("shutdown ends within grace + bounded settle and flush")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// A core host cut off from NATS holds nothing it could still receive: its
/// draining subscriptions do not wait out a long grace for an UNSUB the
/// server cannot confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_host_cut_off_from_nats_does_not_wait_out_the_grace() {
    let mut nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"cut.>\"]\npublish = [\"mirror.>\"]",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "shutdown_grace = \"60s\"").await;
    setup_done(&host).await;
    nats.stop();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(30), host.shutdown())
        .await
        .expect("shutdown does not wait out the 60s grace")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// The dedup store refuses a claim's write (here the bucket's value size
/// limit; in production a full or misconfigured bucket) while reads work.
/// Nobody else holds the key, so the core event is not skipped as a
/// duplicate ("busy"): it runs without dedup, as when the store is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_the_store_refuses_does_not_skip_a_core_event() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "sluice-dedup".into(),
        history: 1,
        max_value_size: 8,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"refused.>\"]\npublish = [\"mirror.>\"]",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "").await;
    setup_done(&host).await;
    let mut mirrored = client.subscribe("mirror.refused.>").await.unwrap();
    sluice::nats::sync::synced(&client, Duration::from_secs(5))
        .await
        .unwrap();
    for i in 0..3 {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("refused-{i}").as_str());
        client
            .publish_with_headers(format!("refused.e{i}"), headers, Bytes::from("x"))
            .await
            .unwrap();
    }
    let mut subjects = BTreeSet::new();
    while subjects.len() < 3 {
        let message = tokio::time::timeout(WAIT, mirrored.next())
            .await
            .unwrap_or_else(|_| panic!("only {subjects:?} ran: {:?}", host.stats("mirror")))
            .unwrap();
        subjects.insert(message.subject.to_string());
    }
    // Counted once the outbox is published, a moment after it arrives.
    eventually(WAIT, "the three events counted as handled", || {
        host.stats("mirror").unwrap().succeeded == 3
    })
    .await;
    let stats = host.stats("mirror").unwrap();
    assert_eq!(stats.lease_conflicts, 0, "no race was lost: {stats:?}");
    host.shutdown().await.unwrap();
}

/// NATS (and with it the KV store) gone at shutdown while keyed core events
/// run: at the deadline each is given up, and at the host's last moment it
/// is counted as lost (`sluice_events_lost_total`) instead of hanging
/// uncounted in the store write that records the give-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_core_events_held_when_nats_is_gone_at_shutdown_are_counted_lost() {
    const EVENTS: u64 = 4;
    let mut nats = NatsServer::start();
    let client = nats.client().await;
    let dir = PluginDir::new();
    dir.add(
        "slow",
        "slow",
        "subjects = [\"held.*\"]\nmax_concurrency = 4\ntimeout = \"60s\"",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "shutdown_grace = \"300ms\"").await;
    setup_done(&host).await;
    for i in 0..EVENTS {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("held-{i}").as_str());
        headers.insert("x-sleep-ms", "30000");
        client
            .publish_with_headers(format!("held.e{i}"), headers, Bytes::from("x"))
            .await
            .unwrap();
    }
    eventually(WAIT, "every event runs", || {
        host.stats("slow").unwrap().received == EVENTS
    })
    .await;
    nats.stop();
    let metrics = host.metrics().clone();
    tokio::time::timeout(Duration::from_secs(20), host.shutdown())
        .await
        .expect("shutdown ends in bounded time")
        .unwrap();
    let lost: u64 = metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("sluice_events_lost_total{plugin=\"slow\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(lost, EVENTS, "{}", metrics.render());
}

/// A JetStream event that gives up while the host is stopping (its last
/// attempt failed within the grace): its dead letter is published and the
/// message terminated then, not handed back with the dead letter left owed
/// (the DLQ was never even tried once stopping had begun).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_event_giving_up_during_the_grace_is_dead_lettered_then() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let dir = PluginDir::new();
    // No publish grant: slow's publish is refused and the attempt fails.
    dir.add(
        "slow",
        "slow",
        "subjects = [\"owed.*\"]\nmode = \"jetstream\"\ntimeout = \"10s\"\n\
         [retry]\nmax_attempts = 1\n[jetstream]\nstream = \"OWED\"\ncreate_stream = true",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "shutdown_grace = \"10s\"").await;
    setup_done(&host).await;
    js_publish(&js, "owed.e1", &[("x-sleep-ms", "3000")], "x").await;
    // Running, not just received (a shutdown between its claim and its
    // start hands it back unattempted).
    eventually(WAIT, "the attempt runs", || {
        host.metrics()
            .render()
            .contains("sluice_events_in_flight{plugin=\"slow\"} 1")
    })
    .await;
    let stats_handle = host.registry();
    host.shutdown().await.unwrap();
    let stats = stats_handle.stats("slow").unwrap();
    assert_eq!(stats.gave_up, 1, "{stats:?}");
    let letters = dlq::list(&js, "SLUICE_DLQ", &Filter::default())
        .await
        .unwrap();
    assert_eq!(
        letters.len(),
        1,
        "dead-lettered within the grace: {stats:?}"
    );
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert_eq!(
        consumer_backlog(&js, "OWED", "sluice-slow").await,
        (0, 0),
        "terminated, not handed back"
    );
}

/// A JetStream message waiting for a slot when the host stops is handed
/// back once, not bounced: an immediate Nak sent it straight back into the
/// host's still-open pull, to be handed back again until the pull was
/// used up, each bounce a delivery (an untracked event's attempt count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_handed_back_at_shutdown_is_not_bounced() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    create_stream(&js, "BOUNCEOUT", &["bounce.*.done"]).await;
    let dir = PluginDir::new();
    // Pulls of 4 (twice max_concurrency): 3 events leave room in the pull.
    dir.add(
        "slow",
        "slow",
        "subjects = [\"bounce.*\"]\npublish = [\"bounce.*.done\"]\nmode = \"jetstream\"\n\
         max_concurrency = 2\ntimeout = \"10s\"\n[jetstream]\nstream = \"BOUNCE\"\ncreate_stream = true",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "").await;
    setup_done(&host).await;
    for i in 0..3 {
        js_publish(&js, &format!("bounce.e{i}"), &[("x-sleep-ms", "1500")], "x").await;
    }
    eventually_async!(
        WAIT,
        "all three delivered: two running, one waiting for a slot",
        consumer_backlog(&js, "BOUNCE", "sluice-slow").await == (0, 3)
    );
    let stats_handle = host.registry();
    host.shutdown().await.unwrap();
    let stats = stats_handle.stats("slow").unwrap();
    assert_eq!(stats.succeeded, 2, "the two running finished: {stats:?}");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("BOUNCE")
        .await
        .unwrap()
        .get_consumer("sluice-slow")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.delivered.consumer_sequence, 3,
        "three deliveries, none bounced: {info:?}"
    );
    assert_eq!(
        info.num_pending + info.num_ack_pending as u64,
        1,
        "{info:?}"
    );
}

/// The durable consumer deleted under the running host (an operator's
/// `nats consumer rm`): it is recreated after the last ack floor the host
/// saw, not at the stream's beginning, which ran every event the stream
/// kept again (a first delivery settled by a confirmed ack keeps no dedup
/// record to stop it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deleted_under_the_host_resumes_after_its_ack_floor() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    create_stream(&js, "RESUMEOUT", &["resume.*.done"]).await;
    let dir = PluginDir::new();
    dir.add(
        "slow",
        "slow",
        "subjects = [\"resume.*\"]\npublish = [\"resume.*.done\"]\nmode = \"jetstream\"\n\
         [jetstream]\nstream = \"RESUME\"\ncreate_stream = true",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "").await;
    setup_done(&host).await;
    let gauge = |name: &str| -> Option<u64> {
        let needle = format!("{name}{{plugin=\"slow\"}} ");
        host.metrics()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(needle.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    for i in 0..20 {
        js_publish(&js, &format!("resume.e{i}"), &[], "x").await;
    }
    eventually(WAIT, "the host saw all 20 acknowledged", || {
        gauge("sluice_jetstream_ack_floor") == Some(20)
    })
    .await;
    js.get_stream("RESUME")
        .await
        .unwrap()
        .delete_consumer("sluice-slow")
        .await
        .unwrap();
    for i in 20..25 {
        js_publish(&js, &format!("resume.e{i}"), &[], "x").await;
    }
    eventually_async!(
        WAIT,
        "recreated and caught up",
        host.stats("slow").unwrap().succeeded >= 25
            && js
                .get_stream("RESUME")
                .await
                .unwrap()
                .consumer_info("sluice-slow")
                .await
                .is_ok()
            && consumer_backlog(&js, "RESUME", "sluice-slow").await == (0, 0)
    );
    assert_eq!(gauge("sluice_consumers_lost_total"), Some(1));
    let stats = host.stats("slow").unwrap();
    assert_eq!(stats.succeeded, 25, "no event ran again: {stats:?}");
    assert_eq!(stream_messages(&js, "RESUMEOUT").await, 25);
    // Removing the plugin takes the gauge away; the counter keeps its total.
    std::fs::remove_file(dir.path().join("slow.wasm")).unwrap();
    eventually(WAIT, "the ack-floor gauge goes with the plugin", || {
        gauge("sluice_jetstream_ack_floor").is_none()
    })
    .await;
    assert_eq!(gauge("sluice_consumers_lost_total"), Some(1));
    host.shutdown().await.unwrap();
}

/// The consumer's stream deleted while the host may not create it, then the
/// stream and the durable consumer created again by someone else (another
/// host on the same durable won the race, or an operator): the host's own
/// rebind failed, but its pulls work again, and `/readyz` must say ready
/// again rather than stay 503 for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_recreated_by_someone_else_makes_the_host_ready_again() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "ELSE", &["else.in"]).await;
    create_stream(&js, "MIRRORED", &["mirror.>"]).await;
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"else.in\"]\npublish = [\"mirror.>\"]\nmode = \"jetstream\"\n[jetstream]\nstream = \"ELSE\"",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "admin_addr = \"127.0.0.1:0\"").await;
    let admin = host.admin_addr().unwrap();
    let mut out = client.subscribe("mirror.else.in").await.unwrap();
    client.flush().await.unwrap();
    setup_done(&host).await;
    js.delete_stream("ELSE").await.unwrap();
    eventually_async!(WAIT, "/readyz names the missing consumer", {
        let (code, body) = http_get(admin, "/readyz").await;
        code == 503 && body.contains("plugin `mirror` JetStream consumer")
    });
    // Stream and consumer back at once, not made by this host.
    create_stream(&js, "ELSE", &["else.in"]).await;
    let made = js
        .get_stream("ELSE")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("sluice-mirror".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            // Settings of its own: the host updates them to its manifest's,
            // keeping the start position (which the server cannot change).
            ack_wait: Duration::from_secs(60),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await;
    if let Err(e) = made {
        // The host bound in between the two creates (rare): it made the
        // consumer itself, which the test does not cover this time.
        eprintln!("the host recreated the consumer first: {e}");
    }
    js_publish(&js, "else.in", &[], "after").await;
    let after = tokio::time::timeout(WAIT, out.next())
        .await
        .expect("pulls work on the recreated consumer")
        .unwrap();
    assert_eq!(&after.payload[..], b"after");
    eventually_async!(
        WAIT,
        "ready again",
        http_get(admin, "/readyz").await.0 == 200
    );
    host.shutdown().await.unwrap();
}

/// The stream and its durable consumer deleted and made again (by another
/// host on the durable, or an operator) while this host could not see it
/// happen (its connection held for a moment): the host notices that the
/// consumer is another one, counts it and binds to it, so the new stream's
/// events are keyed by the new stream, not by the old stream's identity
/// with the new stream's sequences (a redelivery's claim would then match
/// the old stream's dedup records, and be skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_made_again_unseen_is_bound_again() {
    let nats = NatsServer::start();
    let proxy = FaultProxy::start(&nats.url()).await;
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "ALT", &["alt.in"]).await;
    create_stream(&js, "MIRRORED", &["mirror.>"]).await;
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"alt.in\"]\npublish = [\"mirror.>\"]\nmode = \"jetstream\"\n[jetstream]\nstream = \"ALT\"",
    );
    // The host talks to NATS through the proxy; the test does not.
    let host = start_host_configured(&proxy.url(), dir.path(), "").await;
    setup_done(&host).await;
    let lost = || -> Option<u64> {
        let needle = "sluice_consumers_lost_total{plugin=\"mirror\"} ";
        host.metrics()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(needle))
            .and_then(|v| v.trim().parse().ok())
    };
    let key_of = |m: &async_nats::Message| {
        m.headers
            .as_ref()
            .and_then(|h| h.get("x-idempotency-key"))
            .map(|v| v.to_string())
            .expect("mirror sets x-idempotency-key")
    };
    let mut out = client.subscribe("mirror.alt.in").await.unwrap();
    client.flush().await.unwrap();
    js_publish(&js, "alt.in", &[], "first").await;
    let first = tokio::time::timeout(WAIT, out.next())
        .await
        .unwrap()
        .unwrap();

    proxy.pause();
    js.delete_stream("ALT").await.unwrap();
    create_stream(&js, "ALT", &["alt.in"]).await;
    js.get_stream("ALT")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("sluice-mirror".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap();
    proxy.pass();
    eventually(WAIT, "the host notices the consumer is another one", || {
        lost() == Some(1)
    })
    .await;

    js_publish(&js, "alt.in", &[], "second").await;
    let second = tokio::time::timeout(WAIT, out.next())
        .await
        .expect("the new stream's event is handled")
        .unwrap();
    assert_eq!(&second.payload[..], b"second");
    let created_ms = js
        .get_stream("ALT")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .created
        .unix_timestamp_nanos()
        / 1_000_000;
    assert_eq!(
        key_of(&second),
        format!("ALT@{created_ms}:1"),
        "keyed by the new stream (the old stream's first event: {})",
        key_of(&first)
    );
    host.shutdown().await.unwrap();
}

/// A DLQ stream missing at start makes `/readyz` not ready until it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_dlq_stream_at_start_is_retried_and_reported() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    // Another stream owns the DLQ subjects: the host cannot create its DLQ.
    create_stream(&js, "SQUATDLQ", &["sluice.dlq.>"]).await;
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"x.>\"]\npublish = [\"mirror.>\"]",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "admin_addr = \"127.0.0.1:0\"").await;
    let admin = host.admin_addr().unwrap();
    eventually_async!(WAIT, "/readyz names the DLQ", {
        let (code, body) = http_get(admin, "/readyz").await;
        code == 503 && body.contains("DLQ stream")
    });
    js.delete_stream("SQUATDLQ").await.unwrap();
    eventually_async!(
        WAIT,
        "ready once the DLQ exists",
        http_get(admin, "/readyz").await.0 == 200
    );
    assert!(js.get_stream("SLUICE_DLQ").await.is_ok());
    host.shutdown().await.unwrap();
}

/// A plugin removed (its file deleted) or redeployed with other
/// subscriptions while core events wait in its buffer: they are still
/// handled, by the old version on removal and by the new one on a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_core_events_survive_removal_and_a_resubscribing_reload() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "GOOUT", &["go.*.done", "go2.*.done"]).await;
    let dir = PluginDir::new();
    let manifest = |subjects: &str| {
        format!(
            "subjects = [{subjects}]\npublish = [\"go.*.done\", \"go2.*.done\"]\nmax_concurrency = 1\ncore_buffer = 100"
        )
    };
    dir.add("slow", "slow", &manifest("\"go.*\""));
    let host = start_host_configured(&nats.url(), dir.path(), "shutdown_grace = \"30s\"").await;
    let mut headers = HeaderMap::new();
    headers.insert("x-sleep-ms", "300");
    let publish_ten = |round: &'static str| {
        let (client, headers) = (client.clone(), headers.clone());
        async move {
            for i in 0..10 {
                client
                    .publish_with_headers(
                        format!("go.{round}{i}"),
                        headers.clone(),
                        Bytes::from("x"),
                    )
                    .await
                    .unwrap();
            }
            client.flush().await.unwrap();
        }
    };

    // A reload that moves the subscriptions, with events buffered.
    publish_ten("r").await;
    eventually(WAIT, "the first started", || {
        host.stats("slow").unwrap().succeeded >= 1
    })
    .await;
    dir.write("slow.toml", manifest("\"go2.*\"").as_bytes());
    eventually_async!(
        WAIT,
        "all ten handled across the reload",
        stream_messages(&js, "GOOUT").await == 10
    );

    // Removal, with events buffered (the reloaded version subscribes go2.*).
    for i in 0..10 {
        client
            .publish_with_headers(format!("go2.d{i}"), headers.clone(), Bytes::from("x"))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    eventually(WAIT, "the first of the second round started", || {
        host.stats("slow").unwrap().succeeded >= 11
    })
    .await;
    std::fs::remove_file(dir.path().join("slow.wasm")).unwrap();
    eventually_async!(
        WAIT,
        "all ten handled after the removal",
        stream_messages(&js, "GOOUT").await == 20
    );
    let letters = dlq::list(&js, "SLUICE_DLQ", &Filter::default())
        .await
        .unwrap();
    assert!(letters.is_empty(), "{letters:?}");
    host.shutdown().await.unwrap();
}

/// Failure 9: a KV write that lands but whose reply is lost (the ambiguous
/// write). The re-read finds the lease with this claim's own holder token
/// and takes it as ours; before, it answered "busy" and a core event was
/// skipped for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_kv_claim_is_recognised_as_our_own_lease() {
    let nats = NatsServer::start();
    let proxy = FaultProxy::start(&nats.url()).await;
    let client = nats.client().await;
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"amb.>\"]\npublish = [\"mirror.>\"]",
    );
    // The host talks to NATS through the proxy; the test does not.
    let host = start_host_configured(&proxy.url(), dir.path(), "").await;
    // Ready once subscribed; the claim under test needs the KV bucket open.
    setup_done(&host).await;
    let mut out = client.subscribe("mirror.amb.x").await.unwrap();
    client.flush().await.unwrap();
    proxy.lose_replies_to("$KV.sluice-dedup.");
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "amb-1");
    client
        .publish_with_headers("amb.x", headers.clone(), Bytes::from("once"))
        .await
        .unwrap();
    eventually(WAIT, "the claim's reply was lost", || {
        proxy.replies_lost() >= 1
    })
    .await;
    proxy.clear_rules();
    let handled = tokio::time::timeout(WAIT, out.next())
        .await
        .expect("the event is handled, not skipped as busy")
        .unwrap();
    assert_eq!(&handled.payload[..], b"once");
    // The completion was recorded: the same id again is a duplicate.
    client
        .publish_with_headers("amb.x", headers, Bytes::from("again"))
        .await
        .unwrap();
    eventually(WAIT, "the duplicate is skipped", || {
        host.stats("mirror").unwrap().dedup_hits == 1
    })
    .await;
    assert_eq!(host.stats("mirror").unwrap().succeeded, 1);
    host.shutdown().await.unwrap();
}

/// A slow KV store (every dedup write answered late; the proxy keeps TCP
/// order, so everything behind such a reply waits too) delays events but
/// loses and duplicates none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_kv_store_delays_events_but_loses_and_duplicates_none() {
    let nats = NatsServer::start();
    let proxy = FaultProxy::start(&nats.url()).await;
    let js = async_nats::jetstream::new(nats.client().await);
    create_stream(&js, "SLOWKVOUT", &["skv.*.done"]).await;
    let dir = PluginDir::new();
    dir.add(
        "flaky",
        "flaky",
        "subjects = [\"skv.*\"]\npublish = [\"skv.*.done\"]\nmode = \"jetstream\"\ntimeout = \"1s\"\nmax_concurrency = 4\n\
         [jetstream]\nstream = \"SKV\"\ncreate_stream = true",
    );
    let host = start_host_configured(&proxy.url(), dir.path(), "").await;
    proxy.delay_replies_to("$KV.sluice-dedup.", Duration::from_millis(300));
    for i in 0..10 {
        js_publish(&js, &format!("skv.e{i}"), &[], &format!("e{i}")).await;
    }
    eventually(WAIT, "all ten handled", || {
        host.stats("flaky").unwrap().succeeded == 10
    })
    .await;
    eventually_async!(
        WAIT,
        "all acked",
        consumer_backlog(&js, "SKV", "sluice-flaky").await == (0, 0)
    );
    let stats = host.stats("flaky").unwrap();
    assert_eq!(
        stats.succeeded, 10,
        "each event ran to success once: {stats:?}"
    );
    let out: BTreeSet<Vec<u8>> = read_stream(&js, "SLOWKVOUT")
        .await
        .iter()
        .map(|m| m.payload.to_vec())
        .collect();
    assert_eq!(out.len(), 10);
    proxy.clear_rules();
    host.shutdown().await.unwrap();
}
