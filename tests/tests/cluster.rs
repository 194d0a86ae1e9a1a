//! Scale-out on a three-node NATS cluster (issue 15): several hosts share
//! each plugin's durable consumer and the KV dedup records; streams, the DLQ
//! and the dedup bucket are created with three replicas (`replicas = 3`).
//!
//! The JetStream scenarios run `enrich` (one derived event per order) into
//! a DONE stream with three replicas and a duplicate window, and check the
//! same three things: every order handled, exactly one derived event per
//! order downstream, and work done by every host. The faults (a NATS node
//! killed and restarted, a host killed -9, a rolling upgrade, a core host
//! leaving its queue group) happen while events flow; every wait is a poll
//! with a deadline, every assertion is on counts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use sluice::config::Overrides;
use sluice::dispatch::PluginStats;
use sluice::service::HostHandle;
use sluice_e2e::{
    NatsCluster, PluginDir, Running, eventually_async, free_port, http_get, plugin_wasm,
    read_stream, start_host_with, stream_messages, variant, version_of,
};

/// Orders per JetStream scenario: 20,000 (about 10 s of work for three
/// debug-build hosts on two cores). `SLUICE_CLUSTER_EVENTS` overrides.
fn orders() -> usize {
    std::env::var("SLUICE_CLUSTER_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

/// The longest any scenario waits for its orders to be handled.
const ALL_DONE: Duration = Duration::from_secs(300);

/// `enrich` consuming ORDERS (created by the host, R3 from the host's
/// `replicas`), confirmed publishes into DONE.
const ENRICH: &str = "subjects = [\"orders.created\"]\npublish = [\"orders.enriched.>\"]\n\
    mode = \"jetstream\"\ntimeout = \"2s\"\nmax_concurrency = 32\nisolation = \"reuse\"\n\
    [jetstream]\nstream = \"ORDERS\"\ncreate_stream = true\nack_wait = \"4s\"\n";

/// The three-node cluster, a client on it, and the DONE stream (R3, a
/// 10-minute duplicate window) capturing what `enrich` publishes.
async fn cluster_with_done_stream() -> (NatsCluster, async_nats::Client, jetstream::Context) {
    let cluster = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .unwrap();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let config = stream::Config {
        name: "DONE".into(),
        subjects: vec!["orders.enriched.>".into()],
        num_replicas: 3,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    };
    // A new R3 stream needs its own leader elected: on two loaded cores
    // (other clusters' tests running beside) that can outlast one request's
    // 5 s. Creating it again with the same config is idempotent.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match js.create_stream(config.clone()).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("creating the DONE stream (R3): {e}; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("DONE stream (R3) not created within 60 s: {e}"),
        }
    }
    (cluster, client, js)
}

/// An in-process host on every node of the cluster with `replicas = 3`.
async fn host(cluster: &NatsCluster, plugins: &PluginDir) -> HostHandle {
    start_host_with(Overrides {
        nats_url: Some(cluster.urls()),
        plugins: Some(plugins.path().to_path_buf()),
        replicas: Some(3),
        shutdown_grace: Some(Duration::from_secs(10)),
        ..Overrides::default()
    })
    .await
}

/// A `sluice run` process on every node of the cluster with `replicas = 3`
/// and an admin endpoint (for its stats); returns it once serving.
fn host_process(cluster: &NatsCluster, plugins: &PluginDir, grace: &str) -> (Running, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut cmd = sluice_e2e::sluice_command(env!("CARGO_BIN_EXE_sluice-e2e-host"));
    cmd.args([
        "run",
        "--nats-url",
        &cluster.urls(),
        "--replicas",
        "3",
        "--shutdown-grace",
        grace,
        "--admin-addr",
        &admin,
        "--log",
        "warn,sluice::service=info",
        "--plugins",
    ])
    .arg(plugins.path());
    let running = Running::spawn(cmd);
    running.wait_for("sluice is serving", Duration::from_secs(60));
    (running, admin)
}

/// `succeeded` of `plugin` on a host process, from its `/plugins` document.
async fn process_succeeded(admin: &str, plugin: &str) -> u64 {
    let (status, body) = http_get(admin.parse().unwrap(), "/plugins").await;
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("/plugins is JSON");
    doc.as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == plugin)
        .and_then(|p| p["stats"]["succeeded"].as_u64())
        .unwrap_or(0)
}

/// Publish `n` orders (`Nats-Msg-Id: order-<i>`) to ORDERS, 256 at a time,
/// publishing again whatever was not acknowledged (a node down, a leader
/// moving) until every one is: the stream's duplicate window drops repeats.
async fn publish_orders(js: jetstream::Context, n: usize) {
    let deadline = Instant::now() + ALL_DONE;
    let all: Vec<usize> = (0..n).collect();
    let mut last_error = String::new();
    for chunk in all.chunks(256) {
        let mut todo = chunk.to_vec();
        while !todo.is_empty() {
            assert!(
                Instant::now() < deadline,
                "orders not all accepted by the stream within {ALL_DONE:?} (last error: {last_error})"
            );
            let mut acks = Vec::with_capacity(todo.len());
            let mut unsent = Vec::new();
            for (at, &i) in todo.iter().enumerate() {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("order-{i}").as_str());
                let body = format!(r#"{{"order_id":{i},"quantity":2,"unit_price":1.5}}"#);
                let sent = tokio::time::timeout(
                    Duration::from_secs(10),
                    js.publish_with_headers("orders.created", headers, Bytes::from(body)),
                )
                .await
                .map_err(|_| "publish blocked for 10 s".to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = sent {
                    // The connection is down: the rest of the round waits
                    // for the next one.
                    last_error = e;
                    unsent = todo[at..].to_vec();
                    break;
                }
                acks.push((i, sent));
            }
            // The acks are awaited together: each one's 5 s timeout starts
            // when it is awaited, so awaiting them one by one made a round
            // whose acks were lost with a killed node's connection (nothing
            // ever answers them) cost 256 x 5 s, over 20 minutes without a
            // publish, and the hosts ran dry.
            let answers = futures::future::join_all(acks.into_iter().map(|(i, ack)| async move {
                let answer = match ack {
                    Ok(ack) => ack.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                (i, answer)
            }))
            .await;
            let mut failed = unsent;
            for (i, answer) in answers {
                if let Err(e) = answer {
                    last_error = e;
                    failed.push(i);
                }
            }
            if !failed.is_empty() {
                // Back off before publishing them again (the cluster is
                // electing a leader or a node is down).
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            todo = failed;
        }
        if chunk[0] % 4096 == 0 {
            eprintln!("publisher: {} orders accepted", chunk[0]);
        }
    }
}

/// Derived events in DONE; 0 while the cluster cannot answer (a node
/// down, a leader being elected), so polls simply go on.
async fn done(js: &jetstream::Context) -> u64 {
    async {
        let mut stream = js.get_stream("DONE").await.ok()?;
        Some(stream.info().await.ok()?.state.messages)
    }
    .await
    .unwrap_or(0)
}

/// (pending, ack pending) of the shared consumer; `None` while the cluster
/// cannot answer.
async fn backlog(js: &jetstream::Context) -> Option<(u64, usize)> {
    let stream = js.get_stream("ORDERS").await.ok()?;
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer("sluice-enrich").await.ok()?;
    let info = consumer.info().await.ok()?;
    Some((info.num_pending, info.num_ack_pending))
}

/// Wait until all `n` orders have their derived event and the consumer has
/// nothing left out, then check DONE holds exactly one derived event per
/// order; returns how many derived events each plugin version published.
async fn every_order_once(js: &jetstream::Context, n: usize) -> BTreeMap<String, u64> {
    eventually_async!(
        ALL_DONE,
        format!("{n} derived events in DONE"),
        done(js).await >= n as u64
    );
    eventually_async!(
        Duration::from_secs(60),
        "the shared consumer has nothing pending or unacknowledged",
        backlog(js).await == Some((0, 0))
    );
    let derived = read_stream(js, "DONE").await;
    assert_eq!(
        derived.len(),
        n,
        "exactly one derived event per order (no duplicate effect)"
    );
    let mut keys = BTreeSet::new();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for message in &derived {
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let key = body["idempotency_key"].as_str().unwrap().to_string();
        assert!(keys.insert(key.clone()), "two derived events for {key}");
        let version = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Sluice-Plugin-Version"))
            .map(|v| v.as_str().to_string())
            .expect("a derived event names the plugin version");
        *versions.entry(version).or_default() += 1;
    }
    let expected: BTreeSet<String> = (0..n).map(|i| format!("order-{i}")).collect();
    assert_eq!(keys, expected, "every order handled");
    assert_eq!(
        stream_messages(js, "SLUICE_DLQ").await,
        0,
        "nothing dead-lettered"
    );
    versions
}

/// `succeeded` of `plugin` on each host, checking every host did some of
/// the work.
fn every_host_worked(hosts: &[HostHandle], plugin: &str) -> Vec<u64> {
    let succeeded: Vec<u64> = hosts
        .iter()
        .map(|h| h.stats(plugin).unwrap().succeeded)
        .collect();
    assert!(
        succeeded.iter().all(|&s| s > 0),
        "work spread over every host: {succeeded:?}"
    );
    succeeded
}

/// Stop every host gracefully.
async fn shutdown_all(hosts: impl IntoIterator<Item = HostHandle>) {
    for host in hosts {
        host.shutdown().await.unwrap();
    }
}

/// The replica count of stream `name`.
async fn stream_replicas(js: &jetstream::Context, name: &str) -> usize {
    let mut stream = js.get_stream(name).await.expect("stream exists");
    stream
        .info()
        .await
        .expect("stream info")
        .config
        .num_replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hosts_share_the_durable_consumer_and_each_order_has_one_effect() {
    let (cluster, _client, js) = cluster_with_done_stream().await;
    let dir = PluginDir::new();
    dir.add("enrich", "enrich", ENRICH);
    let hosts = [
        host(&cluster, &dir).await,
        host(&cluster, &dir).await,
        host(&cluster, &dir).await,
    ];
    // What the hosts created has three replicas (`replicas = 3`).
    assert_eq!(stream_replicas(&js, "ORDERS").await, 3, "plugin stream");
    eventually_async!(
        Duration::from_secs(30),
        "the DLQ stream and the dedup bucket exist",
        js.get_stream("SLUICE_DLQ").await.is_ok() && js.get_stream("KV_sluice-dedup").await.is_ok()
    );
    assert_eq!(stream_replicas(&js, "SLUICE_DLQ").await, 3, "DLQ stream");
    assert_eq!(
        stream_replicas(&js, "KV_sluice-dedup").await,
        3,
        "dedup KV bucket"
    );

    let n = orders();
    let started = Instant::now();
    publish_orders(js.clone(), n).await;
    let versions = every_order_once(&js, n).await;
    eprintln!("{n} orders through three hosts in {:?}", started.elapsed());
    assert_eq!(versions.len(), 1);

    let succeeded = every_host_worked(&hosts, "enrich");
    assert_eq!(
        succeeded.iter().sum::<u64>(),
        n as u64,
        "without faults no order is handled twice: {succeeded:?}"
    );
    shutdown_all(hosts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_node_killed_mid_run_and_restarted_loses_and_duplicates_nothing() {
    let (mut cluster, _client, js) = cluster_with_done_stream().await;
    let dir = PluginDir::new();
    dir.add("enrich", "enrich", ENRICH);
    let hosts = [
        host(&cluster, &dir).await,
        host(&cluster, &dir).await,
        host(&cluster, &dir).await,
    ];
    let n = orders();
    let publisher = tokio::spawn(publish_orders(js.clone(), n));

    // Kill a node a quarter of the way through: the meta leader, so the
    // cluster must also elect a new one.
    eventually_async!(
        ALL_DONE,
        "a quarter handled",
        done(&js).await >= n as u64 / 4
    );
    let leader = cluster.meta_leader(0).expect("a meta leader");
    let victim = cluster.index_of(&leader).unwrap();
    let at_kill = done(&js).await;
    cluster.stop(victim);
    eprintln!("killed node {leader} (the meta leader) at {at_kill} derived events");
    // The two surviving nodes keep the work going without an operator.
    eventually_async!(
        ALL_DONE,
        "progress with one node down",
        done(&js).await >= at_kill + n as u64 / 4
    );
    let _cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(victim);
        cluster
    })
    .await
    .unwrap();
    eprintln!(
        "node {leader} restarted at {} derived events",
        done(&js).await
    );
    publisher.await.unwrap();
    every_order_once(&js, n).await;

    let succeeded = every_host_worked(&hosts, "enrich");
    eprintln!(
        "node {leader} killed at {at_kill} derived events; handler runs {succeeded:?} for {n} orders"
    );
    shutdown_all(hosts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_killed_mid_run_loses_and_duplicates_nothing_and_the_others_carry_on() {
    let (cluster, _client, js) = cluster_with_done_stream().await;
    let dir = PluginDir::new();
    dir.add("enrich", "enrich", ENRICH);
    let survivors = [host(&cluster, &dir).await, host(&cluster, &dir).await];
    let (victim, admin) = host_process(&cluster, &dir, "10s");
    let n = orders();
    let publisher = tokio::spawn(publish_orders(js.clone(), n));

    // Kill -9 the process host once it has done part of the work (and so
    // holds leases and unacknowledged messages).
    eventually_async!(
        ALL_DONE,
        "the host to be killed has handled some orders and a quarter are done",
        process_succeeded(&admin, "enrich").await > 0 && done(&js).await >= n as u64 / 4
    );
    let victim_succeeded = process_succeeded(&admin, "enrich").await;
    victim.kill_9();
    publisher.await.unwrap();
    every_order_once(&js, n).await;

    let succeeded = every_host_worked(&survivors, "enrich");
    eprintln!(
        "killed host handled at least {victim_succeeded}; survivors {succeeded:?} for {n} orders"
    );
    shutdown_all(survivors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_upgrade_under_load_handles_each_order_once_by_one_version() {
    let (cluster, _client, js) = cluster_with_done_stream().await;
    let v1 = std::fs::read(plugin_wasm("enrich")).unwrap();
    let v2 = variant(&v1, 2);
    let (old, new) = (version_of(&v1), version_of(&v2));
    // One plugin folder per host, so each host is upgraded on its own.
    let dirs = [PluginDir::new(), PluginDir::new(), PluginDir::new()];
    let mut hosts = Vec::new();
    for dir in &dirs {
        dir.write("enrich.wasm", &v1)
            .write("enrich.toml", ENRICH.as_bytes());
        hosts.push(Some(host(&cluster, dir).await));
    }
    // Each host's counters, kept across its shutdown: (version, stats).
    let mut counted: Vec<(String, Arc<PluginStats>)> = hosts
        .iter()
        .map(|h| {
            let h = h.as_ref().unwrap();
            (old.clone(), h.registry().stats_handle("enrich"))
        })
        .collect();
    let n = orders();
    let publisher = tokio::spawn(publish_orders(js.clone(), n));

    for (i, dir) in dirs.iter().enumerate() {
        // Under load: wait for more work to be done before each restart.
        let target = (n as u64 / 5) * (i as u64 + 1);
        eventually_async!(
            ALL_DONE,
            format!("{target} derived events before upgrading host {i}"),
            done(&js).await >= target
        );
        hosts[i].take().unwrap().shutdown().await.unwrap();
        dir.write("enrich.wasm", &v2);
        let upgraded = host(&cluster, dir).await;
        counted.push((new.clone(), upgraded.registry().stats_handle("enrich")));
        hosts[i] = Some(upgraded);
    }
    publisher.await.unwrap();
    let versions = every_order_once(&js, n).await;

    let mut handled: BTreeMap<String, u64> = BTreeMap::new();
    for (version, stats) in &counted {
        *handled.entry(version.clone()).or_default() += stats.snapshot().succeeded;
    }
    assert_eq!(
        handled.values().sum::<u64>(),
        n as u64,
        "each order handled exactly once across the upgrade: {handled:?}"
    );
    assert_eq!(
        versions, handled,
        "each derived event carries the version that handled its order"
    );
    assert!(
        versions.get(&old).is_some_and(|&c| c > 0) && versions.get(&new).is_some_and(|&c| c > 0),
        "both versions handled orders: {versions:?}"
    );
    for host in hosts.into_iter().flatten() {
        host.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_core_host_leaving_its_queue_group_loses_only_what_it_held_and_counts_it() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .unwrap();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let dir = PluginDir::new();
    // `slow` sleeps for x-sleep-ms, then publishes to <subject>.done.
    dir.add(
        "slow",
        "slow",
        "subjects = [\"jobs.*\"]\nqueue_group = \"jobs\"\npublish = [\"jobs.*.done\"]\nmax_concurrency = 4\ntimeout = \"5s\"\n",
    );
    let stay = [host(&cluster, &dir).await, host(&cluster, &dir).await];
    // The leaving host gets a short grace so it still holds events then.
    let (leaving, admin) = host_process(&cluster, &dir, "300ms");
    eventually_async!(
        Duration::from_secs(30),
        "the DLQ stream exists",
        js.get_stream("SLUICE_DLQ").await.is_ok()
    );
    let mut done = client.subscribe("jobs.*.done").await.unwrap();
    client.flush().await.unwrap();

    let n = 600usize;
    let mut headers = HeaderMap::new();
    headers.insert("x-sleep-ms", "20");
    let mut seen = BTreeSet::new();
    for i in 0..n {
        client
            .publish_with_headers(format!("jobs.{i}"), headers.clone(), Bytes::new())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    // The third host leaves (SIGTERM) with its share buffered and running
    // (a third of the events, 20 ms each, four at a time). Every event is
    // published before it leaves: a core message published while a queue
    // member's departure is still propagating between the cluster's nodes
    // can be routed to a node that no longer has the member and is dropped
    // by NATS itself, which no host can see or count.
    eventually_async!(
        Duration::from_secs(30),
        "the leaving host has work",
        process_succeeded(&admin, "slow").await > 0
    );
    leaving.signal("TERM");
    let mut running = leaving;
    assert!(
        running.wait_exit(Duration::from_secs(30)).success(),
        "the leaving host exits cleanly"
    );
    let log = running.drain_lines().join("\n");
    assert!(!log.contains("EVENT LOST"), "{log}");

    // Every event is handled once or dead-lettered (class `shutdown`) by
    // the host that left: none vanished, none handled twice.
    let dead = || async { stream_messages(&js, "SLUICE_DLQ").await };
    let deadline = Instant::now() + ALL_DONE;
    use futures::StreamExt;
    loop {
        let dlq = dead().await as usize;
        if seen.len() + dlq >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} handled and {dlq} dead-lettered of {n}",
            seen.len()
        );
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), done.next()).await
        {
            assert!(
                seen.insert(message.subject.to_string()),
                "{} handled twice",
                message.subject
            );
        }
    }
    let letters = read_stream(&js, "SLUICE_DLQ").await;
    for letter in &letters {
        let class = letter
            .headers
            .as_ref()
            .and_then(|h| h.get("Sluice-Error-Class"))
            .map(|v| v.as_str().to_string());
        assert_eq!(
            class.as_deref(),
            Some("shutdown"),
            "dead-lettered at the grace deadline"
        );
        let original = letter
            .headers
            .as_ref()
            .and_then(|h| h.get("Sluice-Original-Subject"))
            .map(|v| format!("{}.done", v.as_str()))
            .expect("the original subject");
        assert!(
            !seen.contains(&original),
            "{original} both handled and dead-lettered"
        );
    }
    assert_eq!(seen.len() + letters.len(), n, "no event lost");
    // How the rest split between the staying hosts is NATS's choice, not
    // the host's: a server hands a queue group's message to a member
    // connected to it before one on another node, so a staying host on
    // another node than the publisher may get none. Reported, not asserted.
    let stayed: Vec<u64> = stay
        .iter()
        .map(|h| h.stats("slow").unwrap().succeeded)
        .collect();
    eprintln!(
        "{} handled, {} dead-lettered (class shutdown) by the host that left; stayed {stayed:?}",
        seen.len(),
        letters.len()
    );
    shutdown_all(stay).await;
}

/// Throughput of 1, 2 and 3 `sluice run` hosts on the cluster, for
/// docs/scaling.md; not a pass/fail test (`--ignored` runs it). Set
/// `SLUICE_HOST_BIN` to a release build of the host (`cargo build --release
/// -p sluice-e2e --bin sluice-e2e-host`); `SLUICE_CLUSTER_EVENTS` sets the
/// orders per run. Each run gets a fresh cluster; the orders are published
/// while the hosts run, and the time is from the first publish to the last
/// derived event in DONE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for docs/scaling.md, not a check"]
async fn measure_throughput_of_one_two_and_three_hosts() {
    let bin = std::env::var("SLUICE_HOST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sluice-e2e-host").to_string());
    let n = orders();
    let mut lines = Vec::new();
    for hosts in 1..=3usize {
        let (cluster, _client, js) = cluster_with_done_stream().await;
        let dir = PluginDir::new();
        dir.add("enrich", "enrich", ENRICH);
        let mut running = Vec::new();
        for _ in 0..hosts {
            let mut cmd = sluice_e2e::sluice_command(&bin);
            cmd.args([
                "run",
                "--nats-url",
                &cluster.urls(),
                "--replicas",
                "3",
                "--log",
                "warn,sluice::service=info",
                "--plugins",
            ])
            .arg(dir.path());
            let host = Running::spawn(cmd);
            host.wait_for("sluice is serving", Duration::from_secs(60));
            running.push(host);
        }
        let started = Instant::now();
        let publisher = tokio::spawn(publish_orders(js.clone(), n));
        publisher.await.unwrap();
        let published = started.elapsed();
        eventually_async!(ALL_DONE, "every order handled", done(&js).await >= n as u64);
        let elapsed = started.elapsed();
        let line = format!(
            "{hosts} host(s): {n} orders in {:.2} s = {:.0} orders/s (publishing took {:.2} s)",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            published.as_secs_f64()
        );
        eprintln!("{line}");
        lines.push(line);
        for host in running {
            assert!(host.terminate().success());
        }
    }
    eprintln!("{}", lines.join("\n"));
}
