//! `isolation = "reuse"`: a warm instance handles a plugin's next events, up
//! to `reuse_limit`, and never survives a trap, a version change or a need
//! for its pool slot. plugins/counter publishes how many events its instance
//! has handled, which makes reuse visible.

use std::time::Duration;

use async_nats::Subscriber;
use bytes::Bytes;
use sluice_e2e::{
    NatsServer, PluginDir, eventually, next_message, plugin_wasm, start_host_configured, variant,
};

const WAIT: Duration = Duration::from_secs(30);

/// Every event is distinct here, but keep dedup out of the picture anyway,
/// and give up on the first failure so each event is one attempt.
const COMMON: &str =
    "publish = [\"counted.>\"]\n[retry]\nmax_attempts = 1\n[idempotency]\ndedup = false\n";

/// Publish one event to `subject` and return the count the plugin reported.
async fn count(client: &async_nats::Client, out: &mut Subscriber, subject: &str) -> u32 {
    client
        .publish(subject.to_string(), Bytes::from(subject.to_string()))
        .await
        .unwrap();
    let msg = next_message(out, WAIT, &format!("the count for {subject}")).await;
    assert_eq!(msg.subject.as_str(), format!("counted.{subject}"));
    std::str::from_utf8(&msg.payload).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_instance_serves_events_until_its_limit_a_trap_or_a_new_version() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "warm",
        "counter",
        &format!("subjects = [\"count.warm.>\"]\nisolation = \"reuse\"\nreuse_limit = 3\n{COMMON}"),
    )
    .add(
        "fresh",
        "counter",
        &format!("subjects = [\"count.fresh.>\"]\n{COMMON}"),
    );
    let host = start_host_configured(&nats.url(), dir.path(), "").await;
    let client = nats.client().await;
    let mut out = client.subscribe("counted.>").await.unwrap();
    client.flush().await.unwrap();

    // One event at a time, so one instance: it counts up to its limit of 3,
    // then a fresh one takes over.
    let mut counts = Vec::new();
    for i in 0..4 {
        counts.push(count(&client, &mut out, &format!("count.warm.{i}")).await);
    }
    assert_eq!(counts, vec![1, 2, 3, 1], "reused up to reuse_limit");

    // A handler error is a normal return: the instance (now at 2) lives on.
    client
        .publish("count.warm.x.fail", Bytes::from_static(b"f"))
        .await
        .unwrap();
    eventually(WAIT, "the failing event given up", || {
        host.stats("warm").unwrap().gave_up == 1
    })
    .await;
    assert_eq!(count(&client, &mut out, "count.warm.after-fail").await, 3);
    assert_eq!(count(&client, &mut out, "count.warm.a").await, 1, "limit");

    // A trap drops the instance (at 2 when it trapped): the next event starts
    // on a fresh one.
    client
        .publish("count.warm.y.trap", Bytes::from_static(b"t"))
        .await
        .unwrap();
    eventually(WAIT, "the trapping event given up", || {
        host.stats("warm").unwrap().gave_up == 2
    })
    .await;
    assert_eq!(count(&client, &mut out, "count.warm.after-trap").await, 1);

    // A new version never gets the old version's instance.
    assert_eq!(count(&client, &mut out, "count.warm.b").await, 2);
    let new = variant(&std::fs::read(plugin_wasm("counter")).unwrap(), 7);
    let version = sluice_e2e::version_of(&new);
    dir.write("warm.wasm.part", &new);
    std::fs::rename(
        dir.path().join("warm.wasm.part"),
        dir.path().join("warm.wasm"),
    )
    .unwrap();
    eventually(WAIT, "the new version serving", || {
        host.plugins()
            .iter()
            .any(|p| p.name == "warm" && p.version.as_deref() == Some(version.as_str()))
    })
    .await;
    assert_eq!(count(&client, &mut out, "count.warm.new-version").await, 1);

    // Fresh isolation (the default): every event sees a new instance.
    for i in 0..3 {
        assert_eq!(
            count(&client, &mut out, &format!("count.fresh.{i}")).await,
            1
        );
    }
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_warm_instance_gives_its_slot_to_an_event_that_needs_one() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "warm",
        "counter",
        &format!("subjects = [\"count.warm.>\"]\nisolation = \"reuse\"\n{COMMON}"),
    )
    .add(
        "other",
        "counter",
        &format!("subjects = [\"count.other.>\"]\n{COMMON}"),
    );
    // One instance slot for the whole host.
    let host = start_host_configured(&nats.url(), dir.path(), "max_instances = 1\n").await;
    let client = nats.client().await;
    let mut out = client.subscribe("counted.>").await.unwrap();
    client.flush().await.unwrap();

    assert_eq!(count(&client, &mut out, "count.warm.1").await, 1);
    assert_eq!(count(&client, &mut out, "count.warm.2").await, 2, "warm");
    // `warm`'s idle instance holds the only slot; `other` needs it.
    assert_eq!(count(&client, &mut out, "count.other.1").await, 1);
    // So `warm`'s instance was evicted: it starts again.
    assert_eq!(count(&client, &mut out, "count.warm.3").await, 1);
    let stats = host.stats("other").unwrap();
    assert_eq!(stats.failed_attempts, 0, "nobody failed for lack of a slot");
    host.shutdown().await.unwrap();
}
