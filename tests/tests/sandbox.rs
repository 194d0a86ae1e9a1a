//! The sandbox end to end: hostile plugins (plugins/hostile) against a real
//! host and nats-server. Each misbehaviour must end only its own invocation,
//! with the right failure class, retried or given up per policy, with a
//! bounded message; escapes must be refused; limits must hold; and the host
//! must keep serving its other plugins throughout.

use std::time::Duration;

use async_nats::Subscriber;
use bytes::Bytes;
use futures::StreamExt;
use sluice::dispatch::StatsSnapshot;
use sluice::engine::invoke::{FailureClass, MAX_FAILURE_MESSAGE};
use sluice::service::HostHandle;
use sluice_e2e::{NatsServer, PluginDir, eventually, next_message, start_host_configured};

const WAIT: Duration = Duration::from_secs(30);

/// The retry policy every hostile manifest here uses: two attempts, quickly.
const RETRY: &str = "[retry]\nmax_attempts = 2\ninitial_delay = \"10ms\"\nmax_delay = \"20ms\"\n";

/// For tests that send the same payload several times on purpose: without
/// a `Nats-Msg-Id`, identical core events share a content-hash key and the
/// host would (rightly) handle only the first.
const NO_DEDUP: &str = "[idempotency]\ndedup = false\n";

/// What one misbehaviour must come to.
struct Case {
    mode: &'static str,
    payload: String,
    /// `None`: the event succeeds.
    class: Option<FailureClass>,
    /// Words the final failure message must contain.
    needles: &'static [&'static str],
}

fn case(mode: &'static str, class: Option<FailureClass>, needles: &'static [&'static str]) -> Case {
    Case {
        mode,
        payload: String::new(),
        class,
        needles,
    }
}

/// Publish one event to `subject` and wait until the plugin settled it.
async fn settle(
    host: &HostHandle,
    client: &async_nats::Client,
    plugin: &str,
    subject: String,
    payload: String,
) -> (StatsSnapshot, StatsSnapshot) {
    let before = host.stats(plugin).unwrap();
    client
        .publish(subject.clone(), payload.into())
        .await
        .unwrap();
    eventually(WAIT, &format!("{subject} settled"), || {
        let now = host.stats(plugin).unwrap();
        now.gave_up + now.succeeded > before.gave_up + before.succeeded
    })
    .await;
    (before, host.stats(plugin).unwrap())
}

/// Run one case on `plugin` (subject `hostile.<mode>`) and check its outcome.
async fn run_case(
    host: &HostHandle,
    client: &async_nats::Client,
    plugin: &str,
    case: &Case,
) -> (StatsSnapshot, StatsSnapshot) {
    let (before, after) = settle(
        host,
        client,
        plugin,
        format!("hostile.{}", case.mode),
        case.payload.clone(),
    )
    .await;
    check(host, plugin, case, &before, &after);
    (before, after)
}

/// Assert a case's outcome from the stats before and after its event.
fn check(
    host: &HostHandle,
    plugin: &str,
    case: &Case,
    before: &StatsSnapshot,
    after: &StatsSnapshot,
) {
    let mode = case.mode;
    let Some(class) = case.class else {
        assert_eq!(after.succeeded, before.succeeded + 1, "{mode}: {after:?}");
        return;
    };
    let attempts = if class.is_retryable() { 2 } else { 1 };
    assert_eq!(
        after.gave_up_by.get(class) - before.gave_up_by.get(class),
        1,
        "{mode}: given up as {}: {after:?}",
        class.as_str()
    );
    assert_eq!(
        after.failures.get(class) - before.failures.get(class),
        attempts,
        "{mode}: every attempt failed as {}",
        class.as_str()
    );
    assert_eq!(
        after.retries - before.retries,
        attempts - 1,
        "{mode}: retried per policy"
    );
    assert_eq!(
        after.published, before.published,
        "{mode}: nothing published"
    );
    let failure = host.last_gave_up(plugin).expect("a give-up record");
    assert_eq!(failure.class, class, "{mode}: {}", failure.message);
    assert!(
        failure.message.len() <= MAX_FAILURE_MESSAGE + 64,
        "{mode}: message bounded, got {} bytes",
        failure.message.len()
    );
    for needle in case.needles {
        assert!(
            failure.message.contains(needle),
            "{mode}: expected `{needle}` in: {}",
            failure.message
        );
    }
}

/// The healthy neighbour still answers.
async fn neighbour_answers(client: &async_nats::Client, mirrored: &mut Subscriber, tag: &str) {
    client
        .publish(format!("ping.{tag}"), Bytes::from_static(b"ping"))
        .await
        .unwrap();
    let msg = next_message(mirrored, WAIT, &format!("neighbour after {tag}")).await;
    assert_eq!(msg.subject.as_str(), format!("mirror.ping.{tag}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_misbehaviour_ends_only_its_invocation_with_the_right_class() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "hostile",
        "hostile",
        &format!(
            "subjects = [\"hostile.*\"]\npublish = [\"flood.>\"]\ntimeout = \"500ms\"\n{RETRY}"
        ),
    )
    .add(
        "neighbour",
        "mirror",
        "subjects = [\"ping.>\"]\npublish = [\"mirror.>\"]",
    );
    let host = start_host_configured(&nats.url(), dir.path(), "").await;
    let client = nats.client().await;
    let mut mirrored = client.subscribe("mirror.>").await.unwrap();
    let mut flooded = client.subscribe("flood.>").await.unwrap();
    client.flush().await.unwrap();

    use FailureClass::*;
    let cases = [
        case("loop", Some(DeadlineExceeded), &["time limit of 500ms"]),
        case(
            "busy-wait",
            Some(DeadlineExceeded),
            &["time limit of 500ms"],
        ),
        case("sleep", Some(DeadlineExceeded), &["waiting in a host call"]),
        case(
            "grow",
            Some(OutOfMemory),
            &["memory limit of 64 MiB", "memory allocation of"],
        ),
        case("recurse", Some(StackOverflow), &[]),
        case("panic", Some(Trap), &["panics on purpose"]),
        case("malformed", Some(Trap), &["utf-8"]),
        case("huge-error", Some(Permanent), &["EEEE", "more bytes)"]),
        case("publish-flood", Some(PublishLimit), &["max_publishes"]),
        Case {
            payload: "10000".into(),
            ..case("log-flood", None, &[])
        },
    ];
    for case in &cases {
        run_case(&host, &client, "hostile", case).await;
        neighbour_answers(&client, &mut mirrored, case.mode).await;
    }
    let stats = host.stats("hostile").unwrap();
    assert!(
        stats.refused_publishes >= 900,
        "the flood's refusals are counted: {stats:?}"
    );
    assert!(stats.log_dropped >= 9_000, "{stats:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), flooded.next())
            .await
            .is_err(),
        "a publish-limit failure publishes none of its outbox"
    );
    // Every instance went back to the pool.
    eventually(WAIT, "no live instances", || {
        host.pool_usage().component_instances == 0
    })
    .await;
    assert_eq!(host.stats("neighbour").unwrap().failed_attempts, 0);
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_attempts_are_refused_and_nothing_leaves_the_sandbox() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    // The manifest asks for everything; the operator allows `loot.>` (where
    // the plugin would report a breach) and, carelessly, the reserved
    // subjects: those must stay unpublishable anyway.
    dir.add(
        "hostile",
        "hostile",
        &format!("subjects = [\"hostile.*\"]\npublish = [\">\"]\n{RETRY}"),
    );
    let config = r#"
        [plugin.hostile]
        publish_allow = ["loot.>", "sluice.dlq.>", "$JS.>", "$SYS.>", "$KV.>", "_INBOX.>"]
    "#;
    let host = start_host_configured(&nats.url(), dir.path(), config).await;
    let client = nats.client().await;
    let mut leaks = Vec::new();
    // The host itself dead-letters each of these events to the plugin's DLQ
    // subject; the plugin's own publish there must never arrive.
    let mut dlq = client.subscribe("sluice.dlq.hostile").await.unwrap();
    for subject in [
        "loot.>",
        "secret.>",
        "$JS.API.STREAM.DELETE.ORDERS",
        "$JS.API.STREAM.CREATE.STOLEN",
        "$SYS.REQ.SERVER.PING",
        "$KV.config.secret",
        "_INBOX.stolen",
    ] {
        leaks.push(client.subscribe(subject).await.unwrap());
    }
    client.flush().await.unwrap();

    let nats_address = nats.url().trim_start_matches("nats://").to_string();
    let cases = [
        case(
            "fs",
            Some(FailureClass::Permanent),
            &["fs denied", "/etc/passwd"],
        ),
        case(
            "env",
            Some(FailureClass::Permanent),
            &["env denied", "0 env vars, 0 args"],
        ),
        Case {
            payload: nats_address.clone(),
            ..case(
                "socket",
                Some(FailureClass::Permanent),
                &["socket denied", "tcp connect", "udp bind", "resolve"],
            )
        },
        case(
            "ungranted",
            Some(FailureClass::Permanent),
            &["not allowed by the operator"],
        ),
        case(
            "reserved",
            Some(FailureClass::Permanent),
            &["sluice.dlq.hostile", "$JS.API.STREAM.DELETE", "reserved"],
        ),
    ];
    let mut refused = Vec::new();
    for case in &cases {
        let (before, after) = run_case(&host, &client, "hostile", case).await;
        refused.push(after.refused_publishes - before.refused_publishes);
    }
    assert_eq!(
        refused,
        vec![0, 0, 0, 1, 6],
        "each denied publish is counted"
    );
    client.flush().await.unwrap();
    for case in &cases {
        let letter = next_message(&mut dlq, WAIT, "a dead letter").await;
        let headers = letter.headers.expect("dead letters carry headers");
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(
            header("Sluice-Original-Subject"),
            Some(format!("hostile.{}", case.mode)),
            "one dead letter per event, from the host"
        );
        assert_eq!(
            header("Sluice-Error-Class").as_deref(),
            case.class.map(FailureClass::as_str)
        );
        assert_ne!(letter.payload.as_ref(), b"stolen");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(100), dlq.next())
            .await
            .is_err(),
        "the plugin's publish to its DLQ subject left the sandbox"
    );
    for mut leak in leaks {
        assert!(
            tokio::time::timeout(Duration::from_millis(100), leak.next())
                .await
                .is_err(),
            "something left the sandbox"
        );
    }
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_allow_list_caps_what_a_copied_manifest_grants() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    // Copied manifest: grants itself every subject.
    dir.add(
        "mirror",
        "mirror",
        &format!("subjects = [\"allowed.>\", \"other.>\"]\npublish = [\">\"]\n{RETRY}"),
    );
    let config = "[plugin.mirror]\npublish_allow = [\"mirror.allowed.>\"]\n";
    let host = start_host_configured(&nats.url(), dir.path(), config).await;
    let client = nats.client().await;
    let mut out = client.subscribe("mirror.>").await.unwrap();
    client.flush().await.unwrap();

    client
        .publish("allowed.one", Bytes::from_static(b"1"))
        .await
        .unwrap();
    let msg = next_message(&mut out, WAIT, "the allowed publish").await;
    assert_eq!(msg.subject.as_str(), "mirror.allowed.one");

    client
        .publish("other.one", Bytes::from_static(b"2"))
        .await
        .unwrap();
    eventually(WAIT, "the disallowed event is given up", || {
        host.stats("mirror").unwrap().gave_up == 1
    })
    .await;
    let stats = host.stats("mirror").unwrap();
    // mirror turns a refused publish into a retryable error (`?`).
    assert_eq!(stats.failures.get(FailureClass::Retryable), 2, "{stats:?}");
    assert_eq!(stats.refused_publishes, 2, "one refusal per attempt");
    let failure = host.last_gave_up("mirror").unwrap();
    assert!(
        failure.message.contains("not allowed by the operator")
            && failure.message.contains("mirror.allowed.>"),
        "{}",
        failure.message
    );
    client.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), out.next())
            .await
            .is_err()
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_fail_permanently_without_instantiating() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    // If the plugin ran, `panic` would trap; a payload-too-large failure
    // shows it was never run.
    dir.add(
        "hostile",
        "hostile",
        &format!("subjects = [\"hostile.*\"]\nmax_payload = \"1KiB\"\n{RETRY}"),
    );
    let host = start_host_configured(&nats.url(), dir.path(), "").await;
    let client = nats.client().await;
    let big = Case {
        payload: "x".repeat(1025),
        ..case(
            "panic",
            Some(FailureClass::PayloadTooLarge),
            &["1025 bytes", "1024 bytes", "max_payload"],
        )
    };
    let (_, after) = run_case(&host, &client, "hostile", &big).await;
    assert_eq!(after.failures.get(FailureClass::Trap), 0, "never ran");
    // At the limit it runs (and panics, as it should).
    let (before, after) = settle(
        &host,
        &client,
        "hostile",
        "hostile.panic".into(),
        "x".repeat(1024),
    )
    .await;
    assert_eq!(
        after.failures.get(FailureClass::Trap) - before.failures.get(FailureClass::Trap),
        2
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_cannot_raise_its_limits_above_the_operators() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "hostile",
        "hostile",
        &format!(
            "subjects = [\"hostile.*\"]\npublish = [\"flood.>\"]\nmax_memory_mb = 1024\ntimeout = \"10m\"\nmax_publishes = 100000\n{RETRY}"
        ),
    );
    let config = "max_memory_mb = 16\ntimeout = \"300ms\"\n[plugin.hostile]\nmax_publishes = 10\n";
    let host = start_host_configured(&nats.url(), dir.path(), config).await;
    let client = nats.client().await;
    let cases = [
        case(
            "grow",
            Some(FailureClass::OutOfMemory),
            &["memory limit of 16 MiB"],
        ),
        case(
            "loop",
            Some(FailureClass::DeadlineExceeded),
            &["time limit of 300ms"],
        ),
        case(
            "publish-flood",
            Some(FailureClass::PublishLimit),
            &["at most 10 publishes"],
        ),
    ];
    for case in &cases {
        run_case(&host, &client, "hostile", case).await;
    }
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_cut_per_event_and_rate_limited_per_plugin() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "hostile",
        "hostile",
        &format!("subjects = [\"hostile.*\"]\nmax_log_lines = 100\ntimeout = \"20s\"\n{NO_DEDUP}"),
    );
    let host = start_host_configured(&nats.url(), dir.path(), "max_log_rate = 150\n").await;
    let client = nats.client().await;
    let lines = 20_000u64;
    let started = std::time::Instant::now();
    let mut logged = Vec::new();
    for _ in 0..2 {
        let (before, after) = settle(
            &host,
            &client,
            "hostile",
            "hostile.log-flood".into(),
            lines.to_string(),
        )
        .await;
        assert_eq!(after.failed_attempts, 0, "logging never fails an event");
        logged.push(lines - (after.log_dropped - before.log_dropped));
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The first event logs exactly its cap (the budget holds 150 lines).
    assert_eq!(logged[0], 100, "per-event cap");
    // Both share the plugin's budget: 150 at first, refilled at 150 a second.
    let budget = 150.0 + 150.0 * elapsed;
    assert!(
        (logged[0] + logged[1]) as f64 <= budget,
        "rate limit across events: logged {logged:?} in {elapsed:.2}s"
    );

    // stdout and stderr lines go through the same gate.
    let (before, after) = settle(
        &host,
        &client,
        "hostile",
        "hostile.print-flood".into(),
        "2000".into(),
    )
    .await;
    assert_eq!(after.succeeded, before.succeeded + 1);
    assert!(
        after.log_dropped - before.log_dropped >= 2 * 2000 - 100,
        "{after:?}"
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_makes_events_wait_instead_of_failing() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "hostile",
        "hostile",
        &format!("subjects = [\"hostile.*\"]\nmax_concurrency = 16\ntimeout = \"20s\"\n{NO_DEDUP}"),
    );
    // Two pool slots for sixteen concurrent events of 30 ms each.
    let host = start_host_configured(&nats.url(), dir.path(), "max_instances = 2\n").await;
    let client = nats.client().await;
    let n = 20;
    for _ in 0..n {
        client
            .publish("hostile.work", Bytes::from_static(b"30"))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let mut peak = 0;
    eventually(WAIT, "every event handled", || {
        peak = peak.max(host.pool_usage().component_instances);
        host.stats("hostile").unwrap().succeeded == n
    })
    .await;
    let stats = host.stats("hostile").unwrap();
    assert_eq!(stats.failed_attempts, 0, "none failed for lack of a slot");
    assert!(peak <= 2, "never more live instances than slots: {peak}");
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_forged_nats_and_sluice_headers_are_replaced_by_the_host() {
    // Issue 12, failure 10: the host owns every Nats-* and Sluice-* header.
    const WAIT: Duration = Duration::from_secs(30);
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    sluice_e2e::create_stream(&js, "FORGED", &["forged.>"]).await;
    let dir = PluginDir::new();
    dir.add(
        "hostile",
        "hostile",
        "subjects = [\"hostile.*\"]\npublish = [\"forged.>\"]",
    )
    // Downstream: a JetStream consumer of what hostile published, with dedup on.
    .add(
        "downstream",
        "counter",
        "subjects = [\"forged.>\"]\npublish = [\"counted.>\"]\nmode = \"jetstream\"\n[jetstream]\nstream = \"FORGED\"\n[outbox]\nconfirm = false",
    );
    let host = sluice_e2e::start_host(&nats.url(), dir.path()).await;
    client
        .publish("hostile.forge-headers", "3".into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    eventually(WAIT, "the three forged publishes stored", || {
        host.stats("hostile").is_some_and(|s| s.succeeded == 1)
    })
    .await;
    sluice_e2e::eventually_async!(
        WAIT,
        "three forged messages stored (one shared forged id would deduplicate them to one)",
        sluice_e2e::stream_messages(&js, "FORGED").await == 3
    );
    let stored = sluice_e2e::read_stream(&js, "FORGED").await;
    let mut ids = Vec::new();
    for m in &stored {
        let h = m.headers.as_ref().expect("headers");
        let id = h.get("Nats-Msg-Id").expect("an id").as_str().to_string();
        assert!(id.starts_with("sluice-"), "host-derived id, got {id}");
        assert_eq!(h.get_all("Nats-Msg-Id").count(), 1);
        assert!(h.get("Sluice-Idempotency-Key").is_none(), "{h:?}");
        // Server-acting headers dropped: with them the stream would refuse
        // the rollup and the second and third expected-sequence publishes.
        assert!(h.get("Nats-Rollup").is_none(), "{h:?}");
        assert!(h.get("Nats-Expected-Last-Sequence").is_none(), "{h:?}");
        assert_eq!(h.get("Sluice-Plugin").unwrap().as_str(), "hostile");
        assert_eq!(h.get_all("Sluice-Plugin").count(), 1);
        assert_eq!(
            h.get("x-forged-by").unwrap().as_str(),
            "hostile",
            "other headers kept"
        );
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "distinct ids");

    // Downstream handles all three fanned-out messages (none skipped as a
    // duplicate of a forged key).
    eventually(WAIT, "downstream handled every forged message", || {
        host.stats("downstream").is_some_and(|s| s.succeeded == 3)
    })
    .await;
    assert_eq!(host.stats("downstream").unwrap().dedup_hits, 0);
    host.shutdown().await.unwrap();
}
