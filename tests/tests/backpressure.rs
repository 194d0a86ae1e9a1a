//! Circuit breaking and back-pressure: a failing dependency pauses
//! consumption instead of burning retries, memory or the DLQ.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bytes::Bytes;
use sluice::delivery::breaker::Forced;
use sluice::dlq::{self, Filter};
use sluice_e2e::{
    NatsServer, PluginDir, consumer_backlog, create_stream, eventually, read_stream, start_host,
};

const WAIT: Duration = Duration::from_secs(30);

macro_rules! eventually_async {
    ($timeout:expr, $what:expr, $cond:expr) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {:?} waiting for: {}",
                $timeout,
                $what
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }};
}

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
    assert_eq!(entries[0].letter.attempts, 1);
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
