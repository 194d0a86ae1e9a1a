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
