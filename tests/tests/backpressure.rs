//! Circuit breaking and back-pressure: a failing dependency pauses
//! consumption instead of burning retries, memory or the DLQ.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bytes::Bytes;
use sluice::delivery::breaker::Forced;
use sluice::dlq::{self, Filter};
use sluice_e2e::{
    NatsServer, PluginDir, consumer_backlog, create_stream, eventually, eventually_async,
    read_stream, setup_done, start_host,
};

const WAIT: Duration = Duration::from_secs(30);

fn breaker_of(host: &sluice::service::HostHandle, name: &str) -> String {
    host.plugins()
        .into_iter()
        .find(|p| p.name == name)
        .map(|p| p.breaker)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_dependency_opens_the_breaker_and_events_wait_in_the_stream() {
    const EVENTS: usize = 40;
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "DONE", &["jobs.*.done"]).await;
    let dir = PluginDir::new();
    dir.add(
        "flaky",
        "flaky",
        "subjects = [\"jobs.*\"]\npublish = [\"jobs.*.done\"]\nmode = \"jetstream\"\nmax_concurrency = 4\n\
         [jetstream]\nstream = \"JOBS\"\ncreate_stream = true\n\
         [retry]\nmax_attempts = 1000\ninitial_delay = \"20ms\"\nmax_delay = \"50ms\"\nmax_elapsed = \"10m\"\n\
         [breaker]\nconsecutive_failures = 3\ncool_down = \"1s\"\nmax_cool_down = \"2s\"",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    // The failure window below must not be spent on a delivery handed back
    // while the KV bucket opens.
    setup_done(&host).await;

    // The dependency is down for the next 2.5 seconds.
    let until = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 2_500;
    for i in 0..EVENTS {
        let mut h = HeaderMap::new();
        h.insert("x-fail-until-ms", until.to_string().as_str());
        js.publish_with_headers(format!("jobs.j{i}"), h, Bytes::from(i.to_string()))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    eventually(WAIT, "the breaker opens", || {
        breaker_of(&host, "flaky") == "open"
    })
    .await;
    // While open nothing is fetched: the events wait in the stream and their
    // deliveries do not grow (at most the few already in flight when it opened,
    // bounded by max_concurrency); nothing is dead-lettered.
    let opened = host.stats("flaky").unwrap();
    let (pending, _) = consumer_backlog(&js, "JOBS", "sluice-flaky").await;
    assert!(pending > 0, "events wait in the stream while open");
    let window = std::time::Instant::now();
    let mut last = opened;
    while window.elapsed() < Duration::from_millis(500) && breaker_of(&host, "flaky") == "open" {
        last = host.stats("flaky").unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if last.breaker_opened == opened.breaker_opened {
        assert!(
            last.received <= opened.received + 4,
            "deliveries while open: {} -> {}",
            opened.received,
            last.received
        );
    }

    // The dependency comes back: a probe succeeds, the breaker closes, all flow.
    eventually_async!(Duration::from_secs(60), "every event done", {
        consumer_backlog(&js, "JOBS", "sluice-flaky").await == (0, 0)
    });
    let done = read_stream(&js, "DONE").await;
    let ids: BTreeSet<String> = done
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(
        (done.len(), ids.len()),
        (EVENTS, EVENTS),
        "every event processed exactly once"
    );
    let stats = host.stats("flaky").unwrap();
    assert!(stats.breaker_opened >= 1, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(breaker_of(&host, "flaky"), "closed");
    assert!(
        dlq::list(&js, "SLUICE_DLQ", &Filter::default())
            .await
            .unwrap()
            .is_empty()
    );
    eprintln!("breaker test: {stats:?}");
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_dead_letters_or_sheds_core_events_and_operators_can_force_it() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let dir = PluginDir::new();
    dir.add(
        "keep",
        "mirror",
        "subjects = [\"keep.>\"]\npublish = [\"mirror.>\"]",
    )
    .add(
        "shed",
        "mirror",
        "subjects = [\"shed.>\"]\npublish = [\"mirror.>\"]\n[breaker]\nwhen_open = \"shed\"",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let registry = host.registry();
    assert_eq!(registry.force_breaker("keep", Forced::Open), Some("open"));
    assert_eq!(registry.force_breaker("shed", Forced::Open), Some("open"));
    assert_eq!(breaker_of(&host, "keep"), "forced-open");

    client
        .publish("keep.a", Bytes::from_static(b"kept"))
        .await
        .unwrap();
    client
        .publish("shed.a", Bytes::from_static(b"shed"))
        .await
        .unwrap();
    eventually(WAIT, "both turned away", || {
        host.stats("keep").unwrap().dead_lettered == 1 && host.stats("shed").unwrap().shed == 1
    })
    .await;
    let entries = dlq::list(&js, "SLUICE_DLQ", &Filter::default())
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].letter.error_class, "circuit-open");
    assert_eq!(
        entries[0].letter.attempts, 0,
        "Sluice-Attempts counts real attempts only"
    );
    assert_eq!(
        host.stats("keep").unwrap().failed_attempts,
        0,
        "the plugin was never called"
    );

    // Forced closed: events flow again, and the DLQ entry replays fine.
    assert_eq!(
        registry.force_breaker("keep", Forced::Closed),
        Some("closed")
    );
    let mut out = client.subscribe("mirror.>").await.unwrap();
    client.flush().await.unwrap();
    dlq::replay_one(&client, &js, "SLUICE_DLQ", &entries[0])
        .await
        .unwrap();
    let msg = sluice_e2e::next_message(&mut out, WAIT, "the replayed event").await;
    assert_eq!(msg.payload, Bytes::from_static(b"kept"));
    assert_eq!(registry.force_breaker("keep", Forced::Auto), Some("closed"));
    host.shutdown().await.unwrap();
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100k_core_events_at_a_slow_plugin_stays_bounded_and_counts_every_drop() {
    const BURST: u64 = 100_000;
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "slow",
        "slow",
        "subjects = [\"burst.e\"]\npublish = [\"burst.e.done\"]\nmax_concurrency = 4\ncore_buffer = 1000\n[idempotency]\ndedup = false",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let client_drops_before = sluice::nats::client_drops();
    let rss_before = rss_kib();

    // The burst comes from its own thread and runtime, like another process.
    let url = nats.url();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let publisher = async_nats::connect(url).await.unwrap();
            let mut headers = HeaderMap::new();
            headers.insert("x-sleep-ms", "2");
            for i in 0..BURST {
                publisher
                    .publish_with_headers("burst.e", headers.clone(), Bytes::from(i.to_string()))
                    .await
                    .unwrap();
            }
            publisher.flush().await.unwrap();
        })
    })
    .join()
    .unwrap();

    // Every event is either handled or counted as dropped; nothing vanishes.
    let mut peak_rss = rss_before;
    eventually_async!(
        Duration::from_secs(120),
        format!(
            "every event accounted for: {:?}, client drops {}",
            host.stats("slow"),
            sluice::nats::client_drops() - client_drops_before
        ),
        {
            peak_rss = peak_rss.max(rss_kib());
            let s = host.stats("slow").unwrap();
            let client = sluice::nats::client_drops() - client_drops_before;
            s.succeeded + s.dropped + client == BURST
        }
    );
    let s = host.stats("slow").unwrap();
    let client = sluice::nats::client_drops() - client_drops_before;
    assert!(
        s.dropped > 0,
        "a slow plugin under a 100k burst must drop some: {s:?}"
    );
    assert_eq!(
        s.received, s.succeeded,
        "everything taken from the buffer was handled: {s:?}"
    );
    let growth_mib = peak_rss.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 200,
        "memory stays bounded: grew {growth_mib} MiB"
    );
    let metrics = host.metrics().render();
    assert!(
        metrics.contains(&format!(
            "sluice_core_dropped_total{{plugin=\"slow\"}} {}",
            s.dropped
        )),
        "drops are exported"
    );
    eprintln!(
        "burst of {BURST}: handled {}, dropped by the host buffer {}, dropped by the NATS client {client}, RSS growth {growth_mib} MiB",
        s.succeeded, s.dropped
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_force_a_breaker_and_read_plugin_status_from_the_cli() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"m.>\"]\npublish = [\"mirror.>\"]",
    );
    let host = sluice_e2e::start_host_with(sluice::config::Overrides {
        nats_url: Some(nats.url()),
        plugins: Some(dir.path().to_path_buf()),
        admin_addr: Some("127.0.0.1:0".into()),
        ..Default::default()
    })
    .await;
    let admin = host.admin_addr().unwrap().to_string();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-e2e-host"))
            .args(args)
            .args(["--admin", &admin])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["breaker", "mirror", "open"]);
    assert!(
        ok && out.contains("mirror: breaker forced open"),
        "{out}{err}"
    );
    assert_eq!(breaker_of(&host, "mirror"), "forced-open");
    let (ok, table, err) = cli(&["plugins"]);
    assert!(ok, "{err}");
    assert!(
        table.contains("BREAKER") && table.contains("mirror") && table.contains("forced-open"),
        "{table}"
    );
    let (ok, out, _) = cli(&["breaker", "mirror", "auto"]);
    assert!(ok && out.contains("breaker closed"), "{out}");
    let (ok, _, err) = cli(&["breaker", "nosuch", "open"]);
    assert!(!ok && err.contains("404"), "{err}");
    host.shutdown().await.unwrap();
}

/// A slow plugin's host holds at most two pulls of twice its slots: the
/// consumer's `max_ack_pending` is now sized for a fast plugin's deep pulls
/// (and shared by every host), so the host itself must leave a backlog it
/// cannot start in the stream, where another host of the consumer can take
/// it. A consumer made by an older host (with `max_ack_pending` of four
/// times the slots) is brought up to the new size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_plugins_host_holds_two_pulls_of_twice_its_slots_and_the_backlog_stays_in_the_stream()
 {
    const EVENTS: usize = 100;
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "SLOWQ", &["slowq.in"]).await;
    create_stream(&js, "SLOWQOUT", &["slowq.in.done"]).await;
    // The durable as an older host made it.
    js.get_stream("SLOWQ")
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("sluice-slow".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            max_deliver: -1,
            max_ack_pending: 8,
            filter_subjects: vec!["slowq.in".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..EVENTS {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("job-{i}").as_str());
        headers.insert("x-sleep-ms", "20");
        js.publish_with_headers("slowq.in", headers, Bytes::from(format!("job-{i}")))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let dir = PluginDir::new();
    dir.add(
        "slow",
        "slow",
        "subjects = [\"slowq.in\"]\npublish = [\"slowq.in.done\"]\nmode = \"jetstream\"\n\
         max_concurrency = 2\ntimeout = \"10s\"\n[jetstream]\nstream = \"SLOWQ\"",
    );
    let host = start_host(&nats.url(), dir.path()).await;

    // 2 slots of 20 ms events: about 100 events/s, far below what fills a
    // pull of more than its floor (2 × 2 slots) in 5 ms. So the host holds
    // at most two pulls of 4 (plus, for an instant, the acks of events just
    // settled that the server has not applied yet).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (mut most_out, mut saw_backlog_wait) = (0usize, false);
    loop {
        let (pending, out) = consumer_backlog(&js, "SLOWQ", "sluice-slow").await;
        most_out = most_out.max(out);
        saw_backlog_wait |= pending > 0 && out > 0;
        if pending == 0 && out == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backlog was not consumed within 60 s: {pending} pending, {out} out"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        saw_backlog_wait,
        "the host was seen handling while the rest of the backlog waited in the stream"
    );
    assert!(
        (4..=10).contains(&most_out),
        "messages out at once: {most_out} (two pulls of 4, acks just sent aside)"
    );
    let info = js
        .get_stream("SLOWQ")
        .await
        .unwrap()
        .consumer_info("sluice-slow")
        .await
        .unwrap();
    assert_eq!(
        info.config.max_ack_pending,
        sluice::trigger::pull_depth::max_ack_pending_for(2),
        "the older consumer is brought up to the new max_ack_pending"
    );
    assert_eq!(info.config.max_ack_pending, 1024);
    let done: BTreeSet<Vec<u8>> = read_stream(&js, "SLOWQOUT")
        .await
        .iter()
        .map(|m| m.payload.to_vec())
        .collect();
    assert_eq!(done.len(), EVENTS, "every job done");
    host.shutdown().await.unwrap();
}
