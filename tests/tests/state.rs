//! The `state` capability end to end (contract 0.2.0, plugin `totals`):
//! writes commit only with a successful attempt, a redelivered event applies
//! its writes once, compare-and-swap keeps a counter exact across two hosts,
//! TTLs expire, and a plugin that did not ask for state is refused.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use sluice_e2e::{NatsServer, PluginDir, eventually, eventually_async, next_message, start_host};

const WAIT: Duration = Duration::from_secs(20);

const TOTALS: &str =
    "subjects = [\"totals.add.*\"]\npublish = [\"totals.updated.*\"]\nstate = true\n";

/// The `totals` plugin's stored total for `key`, read from the bucket.
async fn stored_total(kv: &kv::Store, key: &str) -> Option<String> {
    kv.get(format!("totals.total/{key}"))
        .await
        .unwrap()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

async fn state_bucket(client: &async_nats::Client) -> kv::Store {
    jetstream::new(client.clone())
        .get_key_value("sluice-state")
        .await
        .expect("the host created the state bucket")
}

fn with_id(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_writes_nothing_and_a_success_commits() {
    failed_then_successful_writes("").await;
}

/// A warm instance keeps its store between events: the failed event's
/// writes must still be forgotten, and the next events still commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_reused_instance_a_failed_attempt_writes_nothing_and_successes_commit() {
    failed_then_successful_writes("isolation = \"reuse\"\n").await;
}

async fn failed_then_successful_writes(isolation: &str) {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "totals",
        "totals",
        &format!("{TOTALS}{isolation}[retry]\nmax_attempts = 1\n"),
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let kv = state_bucket(&client).await;
    let mut updated = client.subscribe("totals.updated.a").await.unwrap();
    client.flush().await.unwrap();

    let mut failing = with_id("fail-1");
    failing.insert("x-fail", "1");
    client
        .publish_with_headers("totals.add.a", failing, Bytes::from_static(b"5"))
        .await
        .unwrap();
    let registry = host.registry();
    eventually(WAIT, "the failing event is given up", || {
        registry.stats("totals").is_some_and(|s| s.gave_up == 1)
    })
    .await;
    assert_eq!(
        stored_total(&kv, "a").await,
        None,
        "the failed write is invisible"
    );

    client
        .publish_with_headers("totals.add.a", with_id("ok-1"), Bytes::from_static(b"2"))
        .await
        .unwrap();
    let msg = next_message(&mut updated, WAIT, "the committed total").await;
    assert_eq!(
        &msg.payload[..],
        b"2",
        "the failed attempt's 5 never counted"
    );
    assert_eq!(stored_total(&kv, "a").await.as_deref(), Some("2"));

    client
        .publish_with_headers("totals.add.a", with_id("ok-2"), Bytes::from_static(b"3"))
        .await
        .unwrap();
    let msg = next_message(&mut updated, WAIT, "the second committed total").await;
    assert_eq!(
        &msg.payload[..],
        b"5",
        "the next event reads the committed 2"
    );
    assert_eq!(stored_total(&kv, "a").await.as_deref(), Some("5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_applies_its_committed_write_once() {
    // What a crash between commit and acknowledgement leads to: the same
    // event (same key) handled again after its writes were committed. With
    // dedup off, the host runs it again; the write's id repeats, so the
    // server drops it.
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "totals",
        "totals",
        &format!("{TOTALS}[idempotency]\ndedup = false\n"),
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let kv = state_bucket(&client).await;
    let mut updated = client.subscribe("totals.updated.once").await.unwrap();
    client.flush().await.unwrap();
    for _ in 0..2 {
        client
            .publish_with_headers(
                "totals.add.once",
                with_id("order-77"),
                Bytes::from_static(b"5"),
            )
            .await
            .unwrap();
        next_message(&mut updated, WAIT, "a handled delivery").await;
    }
    // Counted once the outbox is published, a moment after it arrives.
    eventually(WAIT, "handled twice", || {
        host.stats("totals").unwrap().succeeded == 2
    })
    .await;
    assert_eq!(
        stored_total(&kv, "once").await.as_deref(),
        Some("5"),
        "applied once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_incrementing_one_counter_with_compare_and_swap_end_at_the_exact_total() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "totals",
        "totals",
        &format!(
            "{TOTALS}queue_group = \"totals\"\nmax_concurrency = 4\n[retry]\nmax_attempts = 100\ninitial_delay = \"2ms\"\nmax_delay = \"50ms\"\n"
        ),
    );
    let a = start_host(&nats.url(), dir.path()).await;
    let b = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let kv = state_bucket(&client).await;
    let n = 60u64;
    for i in 0..n {
        client
            .publish_with_headers(
                "totals.add.shared",
                with_id(&format!("inc-{i}")),
                Bytes::from_static(b"1"),
            )
            .await
            .unwrap();
    }
    eventually_async!(WAIT, "every increment handled", {
        let done = a.stats("totals").unwrap().succeeded + b.stats("totals").unwrap().succeeded;
        done == n
    });
    let (sa, sb) = (a.stats("totals").unwrap(), b.stats("totals").unwrap());
    assert!(
        sa.succeeded > 0 && sb.succeeded > 0,
        "both hosts worked: {sa:?} {sb:?}"
    );
    assert_eq!(sa.gave_up + sb.gave_up, 0);
    assert_eq!(
        stored_total(&kv, "shared").await.as_deref(),
        Some(n.to_string().as_str()),
        "conflicts retried ({} + {} failed attempts), none lost or doubled",
        sa.failed_attempts,
        sb.failed_attempts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_written_with_a_ttl_expires() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add("totals", "totals", TOTALS);
    let _host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let kv = state_bucket(&client).await;
    let mut updated = client.subscribe("totals.updated.ttl").await.unwrap();
    client.flush().await.unwrap();
    let mut headers = with_id("ttl-1");
    headers.insert("x-ttl-ms", "1000");
    client
        .publish_with_headers("totals.add.ttl", headers, Bytes::from_static(b"9"))
        .await
        .unwrap();
    next_message(&mut updated, WAIT, "the write with a TTL").await;
    assert_eq!(stored_total(&kv, "ttl").await.as_deref(), Some("9"));
    eventually_async!(
        Duration::from_secs(15),
        "the value expires",
        stored_total(&kv, "ttl").await.is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_refused_to_a_plugin_that_did_not_ask_and_counted() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "totals",
        "totals",
        "subjects = [\"totals.add.*\"]\npublish = [\"totals.updated.*\"]\n",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    client
        .publish("totals.add.x", Bytes::from_static(b"1"))
        .await
        .unwrap();
    let registry = host.registry();
    eventually(WAIT, "the refused event is given up at once", || {
        registry.stats("totals").is_some_and(|s| s.gave_up == 1)
    })
    .await;
    let stats = registry.stats("totals").unwrap();
    assert_eq!(stats.refused_state, 1, "{stats:?}");
    assert_eq!(
        stats.failed_attempts, 1,
        "not-granted is permanent: no retry"
    );
}
