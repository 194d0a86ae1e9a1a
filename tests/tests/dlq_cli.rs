//! `sluice dlq list|replay|purge` as an operator runs them against a real
//! server with real dead letters.

use std::process::{Command, Output};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use sluice_e2e::{NatsServer, PluginDir, eventually, next_message, start_host};

fn sluice(nats: &NatsServer) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-e2e-host"));
    cmd.env("SLUICE_NATS_URL", nats.url());
    cmd
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out: Output = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_replays_and_purges_dead_letters() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    // Core mode: give-ups go to the DLQ (core NATS cannot hold them).
    dir.add(
        "flaky",
        "flaky",
        "subjects = [\"jobs.*\"]\npublish = [\"jobs.*.done\"]\n[retry]\nmax_attempts = 2\ninitial_delay = \"5ms\"",
    )
    .add("reject", "reject", "subjects = [\"payments.*\"]\npublish = [\"payments.*.ok\"]");
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut h = HeaderMap::new();
    h.insert("x-fail-times", "2");
    client
        .publish_with_headers("jobs.a", h, Bytes::from_static(b"job-a"))
        .await
        .unwrap();
    client
        .publish("payments.x", Bytes::from_static(b"garbage"))
        .await
        .unwrap();
    client
        .publish("payments.y", Bytes::from_static(&[0xff, 0xfe]))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "three dead letters", || {
        host.stats("flaky").unwrap().dead_lettered == 1
            && host.stats("reject").unwrap().dead_lettered == 2
    })
    .await;

    let (ok, table, err) = run(sluice(&nats).args(["dlq", "list"]));
    assert!(ok, "{err}");
    assert!(
        table.contains("SEQ") && table.contains("PLUGIN") && table.contains("CLASS"),
        "{table}"
    );
    assert!(
        table.contains("jobs.a") && table.contains("retryable") && table.contains("3 entries"),
        "{table}"
    );

    let (ok, json, err) = run(sluice(&nats).args(["dlq", "list", "--plugin", "reject", "--json"]));
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|r| r["plugin"] == "reject"
            && r["attempts"] == 1
            && r["error_class"] == "permanent")
    );
    assert!(
        rows.iter().any(|r| r["payload_base64"] == "//4="),
        "binary payloads are base64: {json}"
    );
    let (_, filtered, _) =
        run(sluice(&nats).args(["dlq", "list", "--error", "simulated", "--since", "1h"]));
    assert!(
        filtered.contains("1 entry") && filtered.contains("flaky"),
        "{filtered}"
    );

    // Replay needs a selection; a dry run changes nothing.
    let (ok, _, err) = run(sluice(&nats).args(["dlq", "replay", "--plugin", "flaky"]));
    assert!(!ok && err.contains("--all"), "{err}");
    let (ok, dry, _) =
        run(sluice(&nats).args(["dlq", "replay", "--plugin", "flaky", "--all", "--dry-run"]));
    assert!(
        ok && dry.contains("would replay") && dry.contains("jobs.a"),
        "{dry}"
    );

    // Remove the cause (flaky needs 3 attempts; allow them), restart, replay.
    host.shutdown().await.unwrap();
    dir.write(
        "flaky.toml",
        b"subjects = [\"jobs.*\"]\npublish = [\"jobs.*.done\"]\n[retry]\nmax_attempts = 3\ninitial_delay = \"5ms\"",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let mut done = client.subscribe("jobs.a.done").await.unwrap();
    client.flush().await.unwrap();
    let (ok, out, err) = run(sluice(&nats).args([
        "dlq", "replay", "--plugin", "flaky", "--all", "--rate", "50",
    ]));
    assert!(ok, "{err}");
    assert!(out.contains("1 entry replayed"), "{out}");
    let msg = next_message(
        &mut done,
        Duration::from_secs(30),
        "the replayed job succeeds",
    )
    .await;
    assert_eq!(msg.payload, Bytes::from_static(b"job-a"));
    let (_, left, _) = run(sluice(&nats).args(["dlq", "list"]));
    assert!(
        left.contains("2 entries") && !left.contains("jobs.a"),
        "{left}"
    );

    // Purge asks for confirmation.
    eventually(Duration::from_secs(10), "replayed job settled", || {
        host.stats("flaky").unwrap().succeeded == 1
    })
    .await;
    assert_eq!(host.stats("flaky").unwrap().failed_attempts, 2);
    let (ok, _, err) = run(sluice(&nats).args(["dlq", "purge", "--plugin", "reject"]));
    assert!(
        !ok && err.contains("--yes") && err.contains("2 DLQ entries"),
        "{err}"
    );
    let (ok, out, err) = run(sluice(&nats).args(["dlq", "purge", "--plugin", "reject", "--yes"]));
    assert!(ok && out.contains("purged 2"), "{out}{err}");
    let (_, empty, _) = run(sluice(&nats).args(["dlq", "list"]));
    assert!(empty.contains("no DLQ entries"), "{empty}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), done.next())
            .await
            .is_err()
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_runs_again_only_for_the_plugin_that_dead_lettered_it() {
    // Issue 12, failure 5: the pinned key is for the dead-lettering plugin only.
    const WAIT: Duration = Duration::from_secs(30);
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    // Two core plugins on one subject with different keys: `billing` keys on
    // a header and rejects the event, `audit` keys on Nats-Msg-Id and counts it.
    dir.add(
        "billing",
        "reject",
        "subjects = [\"pay.*\"]\npublish = [\"pay.*.ok\"]\n[idempotency]\nkey = \"header:x-order\"",
    )
    .add(
        "audit",
        "counter",
        "subjects = [\"pay.*\"]\npublish = [\"counted.>\"]\n[idempotency]\ndedup = true",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut counted = sluice_e2e::subscribed(&client, "counted.>").await;
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", "pay-1");
    h.insert("x-order", "o-1");
    client
        .publish_with_headers("pay.x", h, Bytes::from_static(b"not json"))
        .await
        .unwrap();
    let first = next_message(&mut counted, WAIT, "audit counts the event").await;
    eventually(WAIT, "billing dead-lettered the event", || {
        host.stats("billing").is_some_and(|s| s.dead_lettered == 1)
    })
    .await;
    let first_id = first
        .headers
        .unwrap()
        .get("Nats-Msg-Id")
        .unwrap()
        .to_string();

    let js = async_nats::jetstream::new(client.clone());
    let key = replay_the_only_dead_letter(&client, &js).await;
    assert_eq!(key, "o-1");
    // billing runs it again (its key pinned); audit receives it, sees it is
    // addressed to billing and skips it.
    billing_reran_and_audit_skipped(&host).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), counted.next())
            .await
            .is_err(),
        "audit published nothing new (first id {first_id})"
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_replay_for_one_plugin_is_skipped_by_the_other_without_a_record() {
    // Issue 16: `audit` settles the original by a confirmed ack (no
    // completion record: its key is the message's own stream position), so
    // it recognises the replay addressed to `billing` by name and skips it.
    const WAIT: Duration = Duration::from_secs(30);
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    sluice_e2e::create_stream(&js, "PAY", &["pay.*"]).await;
    sluice_e2e::create_stream(&js, "COUNTED", &["counted.>"]).await;
    let dir = PluginDir::new();
    let jetstream = "mode = \"jetstream\"\n[jetstream]\nstream = \"PAY\"";
    dir.add(
        "billing",
        "reject",
        &format!("subjects = [\"pay.*\"]\npublish = [\"pay.*.ok\"]\n{jetstream}"),
    )
    .add(
        "audit",
        "counter",
        &format!("subjects = [\"pay.*\"]\npublish = [\"counted.>\"]\n{jetstream}"),
    );
    let host = start_host(&nats.url(), dir.path()).await;
    js.publish("pay.x", Bytes::from_static(b"not json"))
        .await
        .unwrap()
        .await
        .unwrap();
    eventually(WAIT, "audit counted it, billing dead-lettered it", || {
        host.stats("audit").is_some_and(|s| s.succeeded == 1)
            && host.stats("billing").is_some_and(|s| s.dead_lettered == 1)
    })
    .await;

    replay_the_only_dead_letter(&client, &js).await;
    billing_reran_and_audit_skipped(&host).await;
    assert_eq!(
        sluice_e2e::stream_messages(&js, "COUNTED").await,
        1,
        "audit published nothing for the replay"
    );
    host.shutdown().await.unwrap();
}

/// Replay the one entry in the DLQ; its key.
async fn replay_the_only_dead_letter(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
) -> String {
    let stream = sluice::delivery::dead_letter::DEFAULT_DLQ_STREAM;
    let entries = sluice::dlq::list(js, stream, &Default::default())
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "one dead letter: {entries:?}");
    sluice::dlq::replay_one(client, js, stream, &entries[0])
        .await
        .unwrap();
    entries[0].letter.key.clone()
}

/// `billing` ran its replay again (a second dead letter) and `audit`
/// skipped it as a duplicate without running its handler a second time.
async fn billing_reran_and_audit_skipped(host: &sluice::service::HostHandle) {
    const WAIT: Duration = Duration::from_secs(30);
    eventually(WAIT, "billing ran the replay", || {
        host.stats("billing").is_some_and(|s| s.dead_lettered == 2)
    })
    .await;
    eventually(WAIT, "audit skipped the replay", || {
        host.stats("audit").is_some_and(|s| s.dedup_hits == 1)
    })
    .await;
    let audit = host.stats("audit").unwrap();
    assert_eq!(audit.succeeded, 1, "audit ran only once: {audit:?}");
}
