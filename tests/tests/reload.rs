//! Hot deploy by copying files into the plugin folder of a running host.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use sluice_e2e::{
    NatsServer, PluginDir, consumer_backlog, create_stream, eventually, eventually_async,
    plugin_wasm, read_stream, start_host, start_host_adjusted, stream_messages, variant,
    version_of,
};

const WAIT: Duration = Duration::from_secs(30);
const MIRROR_CORE: &str = "subjects = [\"load.>\"]\npublish = [\"mirror.>\"]\nmax_concurrency = 64\n[idempotency]\ndedup = false";

fn serving_version(host: &sluice::service::HostHandle, name: &str) -> Option<String> {
    host.plugins()
        .into_iter()
        .find(|p| p.name == name && p.state == "serving")
        .and_then(|p| p.version)
}

/// `mirror` consuming stream LOAD: every event is stored before it counts as
/// published, so "lost" means lost by the host, never by a busy machine.
const MIRROR_JS: &str = "subjects = [\"load.>\"]\npublish = [\"mirror.>\"]\nmax_concurrency = 64\nmode = \"jetstream\"\n[jetstream]\nstream = \"LOAD\"\n[idempotency]\ndedup = false";

// Zero loss is asserted on JetStream input, published at up to 2,000 events/s
// but paced by the stream's acknowledgements (an unacknowledged publish is
// retried with the same Nats-Msg-Id), and every handled event is counted
// from a stream too: nothing depends on how busy the machine is, only on
// the host. The wait for the backlog fails only when progress stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_swaps_under_load_lose_and_fail_nothing() {
    const PER_TICK: usize = 20; // every 10 ms at most: 2,000 events/s
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    let base = std::fs::read(plugin_wasm("mirror")).unwrap();
    let versions = [variant(&base, 1), variant(&base, 2)];
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "LOAD", &["load.>"]).await;
    create_stream(&js, "OUT", &["mirror.>"]).await;
    dir.write("mirror.wasm", &versions[0])
        .write("mirror.toml", MIRROR_JS.as_bytes());
    let host = start_host(&nats.url(), dir.path()).await;

    // Every output seen live: event id -> versions that published it (a
    // core subscriber sees every publish, duplicates included).
    let seen: Arc<Mutex<HashMap<u64, Vec<String>>>> = Arc::default();
    let mut out = client.subscribe("mirror.>").await.unwrap();
    client.flush().await.unwrap();
    let collector = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(m) = out.next().await {
                let id: u64 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                let version = m
                    .headers
                    .as_ref()
                    .unwrap()
                    .get("Sluice-Plugin-Version")
                    .unwrap()
                    .to_string();
                seen.lock().unwrap().entry(id).or_default().push(version);
            }
        })
    };
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // The load generator runs on its own thread and runtime.
    let publisher = {
        let url = nats.url();
        let publishing = publishing.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
                let started = Instant::now();
                let mut id = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                while publishing.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    let batch: Vec<u64> = (id..id + PER_TICK as u64).collect();
                    store_all(&js, &batch).await;
                    id += PER_TICK as u64;
                }
                (id, started.elapsed())
            })
        })
    };

    let latest_version = |seen: &Mutex<HashMap<u64, Vec<String>>>| {
        let seen = seen.lock().unwrap();
        seen.iter()
            .max_by_key(|(id, _)| **id)
            .map(|(_, v)| v[0].clone())
    };
    eventually_async!(WAIT, "load flowing", latest_version(&seen).is_some());
    let mut switch_times = Vec::new();
    for swap in 1..=10 {
        let next = &versions[swap % 2];
        let expected = version_of(next);
        let placed = Instant::now();
        std::fs::write(dir.path().join("mirror.wasm"), next).unwrap();
        eventually_async!(
            Duration::from_secs(60),
            format!("swap {swap} seen in handled events"),
            latest_version(&seen).as_deref() == Some(expected.as_str())
        );
        switch_times.push(placed.elapsed());
    }
    publishing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (published, load_time) = publisher.join().unwrap();
    let rate = published as f64 / load_time.as_secs_f64();
    assert_eq!(stream_messages(&js, "LOAD").await, published);

    // Wait for the backlog while it shrinks; fail only if it stops moving.
    let mut last = (0u64, Instant::now());
    loop {
        let handled = stream_messages(&js, "OUT").await;
        if handled == published {
            break;
        }
        if handled != last.0 {
            last = (handled, Instant::now());
        }
        assert!(
            last.1.elapsed() < Duration::from_secs(60),
            "no progress for 60 s: {handled} of {published} events handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last outputs land before their events are acknowledged.
    eventually_async!(
        WAIT,
        "everything acknowledged",
        consumer_backlog(&js, "LOAD", "sluice-mirror").await == (0, 0)
    );
    let stored: std::collections::BTreeSet<u64> = read_stream(&js, "OUT")
        .await
        .iter()
        .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
        .collect();
    assert!(
        stored.len() as u64 == published && (0..published).all(|id| stored.contains(&id)),
        "an event was lost: {} distinct outputs for {published} events",
        stored.len()
    );
    collector.abort();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let twice: Vec<_> = seen.iter().filter(|(_, v)| v.len() != 1).collect();
    assert!(
        twice.is_empty(),
        "events handled more than once: {:?}",
        &twice[..twice.len().min(5)]
    );
    let stats = host.stats("mirror").unwrap();
    assert_eq!(stats.failed_attempts, 0, "{stats:?}");
    assert_eq!(stats.succeeded, published, "{stats:?}");
    assert_eq!(host.reload_counters().reload_failures, 0);
    let worst = switch_times.iter().max().unwrap();
    eprintln!(
        "{published} events at {rate:.0}/s (acknowledged), 10 swaps; file-in-place to first event on the new version: {switch_times:?} (worst {worst:?})"
    );
    host.shutdown().await.unwrap();
}

/// Publish `ids` to `load.e` (payload and Nats-Msg-Id: the id) and wait
/// until the stream stored each; an unacknowledged one is sent again with
/// the same id, which the stream's duplicate window stores once.
async fn store_all(js: &async_nats::jetstream::Context, ids: &[u64]) {
    let mut pending: Vec<u64> = ids.to_vec();
    while !pending.is_empty() {
        let mut acks = Vec::with_capacity(pending.len());
        for id in &pending {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.to_string().as_str());
            let ack = js
                .publish_with_headers("load.e", headers, Bytes::from(id.to_string()))
                .await;
            acks.push((*id, ack));
        }
        let mut again = Vec::new();
        for (id, ack) in acks {
            let stored = match ack {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if !stored {
                again.push(id);
            }
        }
        pending = again;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_copy_in_chunks_is_loaded_only_when_complete() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    let base = std::fs::read(plugin_wasm("mirror")).unwrap();
    let (v1, v2) = (variant(&base, 1), variant(&base, 2));
    dir.write("mirror.wasm", &v1)
        .write("mirror.toml", MIRROR_CORE.as_bytes());
    let host = start_host(&nats.url(), dir.path()).await;
    assert_eq!(serving_version(&host, "mirror"), Some(version_of(&v1)));

    // A writer that keeps the file open and trickles 4 KiB chunks.
    let mut file = std::fs::File::create(dir.path().join("mirror.wasm")).unwrap();
    for chunk in v2.chunks(4096) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(15));
        assert_eq!(
            serving_version(&host, "mirror"),
            Some(version_of(&v1)),
            "v1 serves while v2 arrives"
        );
    }
    drop(file);
    eventually(WAIT, "v2 serves", || {
        serving_version(&host, "mirror") == Some(version_of(&v2))
    })
    .await;

    // A writer that reopens the file for every chunk (each close is an event).
    std::fs::write(dir.path().join("mirror.wasm"), b"").unwrap();
    for chunk in v1.chunks(4096) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("mirror.wasm"))
            .unwrap();
        f.write_all(chunk).unwrap();
        drop(f);
        std::thread::sleep(Duration::from_millis(15));
    }
    eventually(WAIT, "v1 serves again", || {
        serving_version(&host, "mirror") == Some(version_of(&v1))
    })
    .await;
    let counters = host.reload_counters();
    assert_eq!(
        counters.reload_failures, 0,
        "no truncated version was reported or run: {counters:?}"
    );

    let client = nats.client().await;
    let mut out = client.subscribe("mirror.>").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("load.x", Bytes::from_static(b"7"))
        .await
        .unwrap();
    let msg = tokio::time::timeout(WAIT, out.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        msg.headers
            .unwrap()
            .get("Sluice-Plugin-Version")
            .unwrap()
            .as_str(),
        version_of(&v1)
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_new_versions_leave_the_old_one_serving() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    let good = std::fs::read(plugin_wasm("mirror")).unwrap();
    dir.write("mirror.wasm", &good)
        .write("mirror.toml", MIRROR_CORE.as_bytes());
    let host = start_host(&nats.url(), dir.path()).await;
    let v1 = version_of(&good);
    let client = nats.client().await;
    let mut out = client.subscribe("mirror.>").await.unwrap();
    client.flush().await.unwrap();

    let wrong_world = std::fs::read(plugin_wasm("wrong-world")).unwrap();
    let bad: [(&str, &[u8], &str); 4] = [
        ("garbage", b"definitely not wasm", "not a WebAssembly file"),
        (
            "truncated",
            &good[..good.len() / 3],
            "not a valid component",
        ),
        (
            "wrong world",
            &wrong_world,
            "does not implement the sluice world",
        ),
        ("bad manifest", &good, "subjetcs"),
    ];
    for (i, (what, bytes, reason)) in bad.iter().enumerate() {
        if *what == "bad manifest" {
            dir.write("mirror.toml", b"subjetcs = [\"load.>\"]");
        } else {
            dir.write("mirror.wasm", bytes);
        }
        eventually(WAIT, &format!("{what} reported"), || {
            host.plugins().iter().any(|p| {
                p.name == "mirror" && p.error.as_deref().is_some_and(|e| e.contains(reason))
            })
        })
        .await;
        let status = host
            .plugins()
            .into_iter()
            .find(|p| p.name == "mirror")
            .unwrap();
        assert_eq!(
            (status.state.as_str(), status.version.as_deref()),
            ("serving", Some(v1.as_str())),
            "{what}"
        );
        assert_eq!(host.reload_counters().reload_failures, i as u64 + 1);
        client
            .publish("load.check", Bytes::from(i.to_string()))
            .await
            .unwrap();
        let msg = tokio::time::timeout(WAIT, out.next())
            .await
            .expect("old version still serves")
            .unwrap();
        assert_eq!(
            msg.headers
                .unwrap()
                .get("Sluice-Plugin-Version")
                .unwrap()
                .as_str(),
            v1,
            "{what}"
        );
        if *what == "bad manifest" {
            dir.write("mirror.toml", MIRROR_CORE.as_bytes());
        }
    }
    // Copying a good file fixes it.
    let v2 = variant(&good, 9);
    dir.write("mirror.wasm", &v2);
    eventually(WAIT, "the good file serves", || {
        host.plugins().iter().any(|p| {
            p.name == "mirror"
                && p.version.as_deref() == Some(version_of(&v2).as_str())
                && p.error.is_none()
        })
    })
    .await;
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_jetstream_plugin_stops_consuming_and_catches_up_when_copied_back() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "MIRRORED", &["mirror.>"]).await;
    let dir = PluginDir::new();
    let manifest = "subjects = [\"in.>\"]\npublish = [\"mirror.>\"]\nmode = \"jetstream\"\n[jetstream]\nstream = \"IN\"\ncreate_stream = true";
    dir.add("mirror", "mirror", manifest);
    let host = start_host(&nats.url(), dir.path()).await;
    js.publish("in.before", Bytes::from_static(b"0"))
        .await
        .unwrap()
        .await
        .unwrap();
    eventually_async!(
        WAIT,
        "served before removal",
        stream_messages(&js, "MIRRORED").await == 1
    );

    std::fs::remove_file(dir.path().join("mirror.wasm")).unwrap();
    eventually(WAIT, "plugin gone", || {
        host.plugins().iter().all(|p| p.name != "mirror")
    })
    .await;
    // The removed plugin's last pull request expires (it would hand back, Nak,
    // whatever it still received); after that nothing pulls at all.
    eventually_async!(WAIT, "no pull request outstanding", {
        let stream = js.get_stream("IN").await.unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("sluice-mirror").await.unwrap();
        consumer.info().await.unwrap().num_waiting == 0
    });
    for i in 1..=20 {
        js.publish("in.while-gone", Bytes::from(i.to_string()))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Nobody consumes them: they wait in the stream, on the kept durable consumer.
    eventually_async!(
        WAIT,
        "events wait in the stream",
        consumer_backlog(&js, "IN", "sluice-mirror").await.0 == 20
    );
    assert_eq!(stream_messages(&js, "MIRRORED").await, 1);

    dir.add("mirror", "mirror", manifest);
    eventually_async!(
        WAIT,
        "caught up after redeploy",
        stream_messages(&js, "MIRRORED").await == 21
    );
    eventually_async!(
        WAIT,
        "all acked",
        consumer_backlog(&js, "IN", "sluice-mirror").await == (0, 0)
    );
    let bodies: Vec<String> = read_stream(&js, "MIRRORED")
        .await
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies.len(), 21);
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_warm_cache_does_not_recompile_and_a_corrupt_entry_is_rebuilt() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add("mirror", "mirror", MIRROR_CORE);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap().to_string();
    let url = nats.url();
    let start = || {
        let cache_dir = cache_dir.clone();
        start_host_adjusted(&url, dir.path(), move |o| o.compile_cache = Some(cache_dir))
    };
    let host = start().await;
    let cold = host.reload_counters();
    assert_eq!((cold.compiled, cold.cache_hits), (1, 0), "{cold:?}");
    host.shutdown().await.unwrap();

    let host = start().await;
    let warm = host.reload_counters();
    assert_eq!(
        (warm.compiled, warm.cache_hits),
        (0, 1),
        "warm restart must not recompile: {warm:?}"
    );
    host.shutdown().await.unwrap();

    // Corrupt the entry: detected by its checksum, rebuilt, and the plugin serves.
    let entry = std::fs::read_dir(cache.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, bytes).unwrap();
    let host = start().await;
    let rebuilt = host.reload_counters();
    assert_eq!(
        (rebuilt.compiled, rebuilt.cache_hits),
        (1, 0),
        "{rebuilt:?}"
    );
    assert_eq!(host.plugins()[0].state, "serving");
    let client = nats.client().await;
    let mut out = client.subscribe("mirror.>").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("load.after", Bytes::from_static(b"1"))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, out.next())
        .await
        .expect("serves after the rebuild")
        .unwrap();
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_change_moves_the_subscriptions() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"old.>\"]\npublish = [\"mirror.>\"]",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut out = client.subscribe("mirror.>").await.unwrap();
    client.flush().await.unwrap();

    dir.write(
        "mirror.toml",
        b"subjects = [\"new.>\"]\npublish = [\"mirror.>\"]",
    );
    eventually(WAIT, "the new subjects are in the status", || {
        host.plugins()
            .iter()
            .any(|p| p.name == "mirror" && p.subjects == ["new.>"])
    })
    .await;
    client.flush().await.unwrap();
    client
        .publish("old.x", Bytes::from_static(b"1"))
        .await
        .unwrap();
    client
        .publish("new.x", Bytes::from_static(b"2"))
        .await
        .unwrap();
    let msg = tokio::time::timeout(WAIT, out.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.subject.as_str(), "mirror.new.x");
    client.flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), out.next())
            .await
            .is_err(),
        "the removed subject is no longer consumed"
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_into_place_is_deployed() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    let base = std::fs::read(plugin_wasm("mirror")).unwrap();
    let (v1, v2) = (variant(&base, 1), variant(&base, 2));
    dir.write("mirror.wasm", &v1)
        .write("mirror.toml", MIRROR_CORE.as_bytes());
    let host = start_host(&nats.url(), dir.path()).await;
    // The deploy tool's way: write beside, then rename over (atomic).
    dir.write("mirror.wasm.part", &v2);
    std::fs::rename(
        dir.path().join("mirror.wasm.part"),
        dir.path().join("mirror.wasm"),
    )
    .unwrap();
    eventually(WAIT, "the renamed file serves", || {
        serving_version(&host, "mirror") == Some(version_of(&v2))
    })
    .await;
    assert_eq!(host.reload_counters().reload_failures, 0);
    host.shutdown().await.unwrap();
}

/// The `sluice_plugins{state=...}` value in the host's metrics.
fn plugins_gauge(host: &sluice::service::HostHandle, state: &str) -> Option<i64> {
    let needle = format!("sluice_plugins{{state=\"{state}\"}} ");
    host.metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(needle.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

// Issue 12, failure 14: nothing here reads `/plugins`, `/readyz` or
// `host.plugins()` (which used to be what freed retired versions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_versions_are_freed_and_the_gauge_kept_current_without_anyone_polling() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    let base = std::fs::read(plugin_wasm("counter")).unwrap();
    let manifest = "subjects = [\"count.>\"]\npublish = [\"counted.>\"]\nisolation = \"reuse\"";
    dir.write("counter.wasm", &variant(&base, 0))
        .write("counter.toml", manifest.as_bytes());
    let host = start_host(&nats.url(), dir.path()).await;
    assert!(host.admin_addr().is_none(), "no admin endpoint to poll");
    let client = nats.client().await;
    let mut counted = sluice_e2e::subscribed(&client, "counted.>").await;
    eventually(WAIT, "the gauge counts the serving plugin", || {
        plugins_gauge(&host, "serving") == Some(1)
    })
    .await;
    client.publish("count.x", "e".into()).await.unwrap();
    next_message_of(&mut counted).await;
    assert_eq!(
        host.pool_usage().component_instances,
        1,
        "one warm instance"
    );

    for swap in 1..=5u32 {
        let reloads = host.reload_counters().reloads;
        dir.write("counter.wasm", &variant(&base, swap));
        eventually(WAIT, &format!("swap {swap} in service"), || {
            host.reload_counters().reloads > reloads
        })
        .await;
        // The new version handles an event and keeps its instance warm
        // (distinct payloads: identical core messages share a key).
        client
            .publish("count.x", format!("e{swap}").into())
            .await
            .unwrap();
        next_message_of(&mut counted).await;
        // The old version's warm instance goes with it: one live instance.
        eventually(WAIT, "the retired version is freed", || {
            host.pool_usage().component_instances == 1
        })
        .await;
        assert_eq!(host.registry().retired_alive(), 0);
    }

    // Removing the plugin shows in the gauge at once, unpolled.
    std::fs::remove_file(dir.path().join("counter.wasm")).unwrap();
    eventually(WAIT, "the gauge drops the removed plugin", || {
        plugins_gauge(&host, "serving") == Some(0)
    })
    .await;
    eventually(WAIT, "its last warm instance is freed", || {
        host.pool_usage().component_instances == 0
    })
    .await;
    host.shutdown().await.unwrap();
}

async fn next_message_of(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    sluice_e2e::next_message(sub, WAIT, "the plugin handled the event").await
}

/// A reload that changes a core plugin's subjects (or only its concurrency)
/// keeps the subscriptions of the subjects it keeps. Before, every such
/// reload subscribed anew and then drained the old subscriptions: an event
/// published in between reached both and ran twice (a core event's default
/// key is unique per message, so nothing deduplicated it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_reload_keeps_the_subscriptions_of_the_subjects_it_keeps() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    let manifest = |subjects: &str, concurrency: u32| {
        format!(
            "subjects = [{subjects}]\npublish = [\"mirror.>\"]\ncore_buffer = 100000\nmax_concurrency = {concurrency}"
        )
    };
    dir.add("mirror", "mirror", &manifest("\"keep.>\"", 8));
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut subscription = client.subscribe("mirror.>").await.unwrap();
    sluice::nats::sync::synced(&client, WAIT).await.unwrap();
    // Read all along, so the client's subscription buffer never overflows
    // however long the reloads take.
    let (copy, mut out) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            if copy.send(message).is_err() {
                break;
            }
        }
    });

    // Events on the kept subject all along the two reloads (10 per ms).
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publisher = tokio::spawn({
        let (client, publishing) = (client.clone(), publishing.clone());
        async move {
            let mut sent = 0u64;
            while publishing.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..10 {
                    client
                        .publish("keep.x", Bytes::from(sent.to_string()))
                        .await
                        .unwrap();
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sent
        }
    });
    let reloads = host.reload_counters().reloads;
    dir.write(
        "mirror.toml",
        manifest("\"keep.>\", \"added.>\"", 8).as_bytes(),
    );
    eventually(WAIT, "a subject added", || {
        host.reload_counters().reloads > reloads
    })
    .await;
    dir.write(
        "mirror.toml",
        manifest("\"keep.>\", \"added.>\"", 4).as_bytes(),
    );
    eventually(WAIT, "the concurrency changed", || {
        host.reload_counters().reloads > reloads + 1
    })
    .await;
    publishing.store(false, std::sync::atomic::Ordering::Relaxed);
    let sent = publisher.await.unwrap();
    client
        .publish("added.y", Bytes::from_static(b"added"))
        .await
        .unwrap();

    // Every event mirrored once: the kept subscription was never doubled.
    let mut seen = HashMap::new();
    while seen.len() < sent as usize + 1 {
        let message = tokio::time::timeout(WAIT, out.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {} events mirrored: {:?}",
                    seen.len(),
                    sent + 1,
                    host.stats("mirror")
                )
            })
            .unwrap();
        *seen
            .entry((message.subject.to_string(), message.payload.clone()))
            .or_insert(0u32) += 1;
    }
    eventually(WAIT, "every event the host received settled", || {
        let stats = host.stats("mirror").unwrap();
        stats.succeeded == stats.received
    })
    .await;
    let stats = host.stats("mirror").unwrap();
    assert_eq!(
        stats.received,
        sent + 1,
        "each event received once: {stats:?}"
    );
    assert!(seen.values().all(|&n| n == 1), "an event ran twice");
    host.shutdown().await.unwrap();
}
