//! The admin endpoint of a running host: `/readyz` follows the NATS
//! connection and the plugins, `/metrics` is Prometheus text whose counters
//! move with real traffic, `/plugins` reports each plugin.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice::config::Overrides;
use sluice_e2e::{NatsServer, PluginDir, http_get, next_message, start_host_with};

fn with_admin(nats: &NatsServer, dir: &PluginDir) -> Overrides {
    Overrides {
        nats_url: Some(nats.url()),
        plugins: Some(dir.path().to_path_buf()),
        admin_addr: Some("127.0.0.1:0".into()),
        ..Overrides::default()
    }
}

/// Poll `path` until `accept(status, body)` holds, or panic after `timeout`.
async fn poll(
    admin: SocketAddr,
    path: &str,
    timeout: Duration,
    what: &str,
    accept: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = http_get(admin, path).await;
        if accept(status, &body) {
            return (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last {path}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_flips_when_nats_server_stops_and_back_when_it_restarts() {
    let mut nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "mirror",
        "mirror",
        "subjects = [\"ready.>\"]\npublish = [\"mirror.>\"]",
    );
    let host = start_host_with(with_admin(&nats, &dir)).await;
    let admin = host.admin_addr().expect("admin endpoint is on");
    poll(
        admin,
        "/readyz",
        Duration::from_secs(10),
        "ready",
        |s, _| s == 200,
    )
    .await;

    nats.stop();
    let (_, body) = poll(
        admin,
        "/readyz",
        Duration::from_secs(10),
        "not ready",
        |s, _| s == 503,
    )
    .await;
    assert!(body.contains("NATS is not connected"), "{body}");
    assert_eq!(
        http_get(admin, "/healthz").await.0,
        200,
        "alive while NATS is down"
    );
    let metrics = http_get(admin, "/metrics").await.1;
    assert_eq!(
        sample(&metrics, "sluice_nats_connected"),
        Some(0.0),
        "{metrics}"
    );

    nats.restart();
    poll(
        admin,
        "/readyz",
        Duration::from_secs(15),
        "ready again",
        |s, _| s == 200,
    )
    .await;
    let metrics = http_get(admin, "/metrics").await.1;
    assert_eq!(sample(&metrics, "sluice_nats_connected"), Some(1.0));
    assert!(sample(&metrics, "sluice_nats_reconnects_total").unwrap() >= 1.0);

    // The subscriptions came back with the connection.
    let client = nats.client().await;
    let mut mirrored = client.subscribe("mirror.ready.>").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("ready.after", Bytes::from_static(b"back"))
        .await
        .unwrap();
    let m = next_message(
        &mut mirrored,
        Duration::from_secs(10),
        "event after reconnect",
    )
    .await;
    assert_eq!(&m.payload[..], b"back");
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_real_traffic() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "enrich",
        "enrich",
        "subjects = [\"orders.created\"]\npublish = [\"orders.enriched.>\"]",
    )
    .add(
        "reject",
        "reject",
        "subjects = [\"payments.*\"]\npublish = [\"payments.*.ok\"]",
    )
    .write("garbage.wasm", b"not wasm")
    .write("garbage.toml", b"subjects = [\"x\"]");
    let host = start_host_with(with_admin(&nats, &dir)).await;
    let admin = host.admin_addr().unwrap();

    // A plugin that failed to load keeps the host not ready, with the reason
    // (reported once the just-written file has settled).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let (status, body) = http_get(admin, "/readyz").await;
        if body.contains("plugin `garbage` is failed") || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("plugin `garbage` is failed"), "{body}");
    let (status, plugins) = http_get(admin, "/plugins").await;
    assert_eq!(status, 200);
    let plugins: serde_json::Value = serde_json::from_str(&plugins).unwrap();
    let states: BTreeMap<&str, &str> = plugins
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        BTreeMap::from([
            ("enrich", "serving"),
            ("garbage", "failed"),
            ("reject", "serving")
        ])
    );

    let client = nats.client().await;
    for i in 0..5 {
        client
            .publish(
                "orders.created",
                Bytes::from(format!(r#"{{"id":"m-{i}","quantity":1,"unit_price":2}}"#)),
            )
            .await
            .unwrap();
    }
    client
        .publish("payments.card", Bytes::from_static(br#"{"id":"p-1"}"#))
        .await
        .unwrap();
    for bad in ["not json", "[1,2]"] {
        client
            .publish("payments.card", Bytes::from_static(bad.as_bytes()))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    let (_, text) = poll(
        admin,
        "/metrics",
        Duration::from_secs(20),
        "traffic counted",
        |_, t| {
            sample(
                t,
                r#"sluice_events_handled_total{plugin="enrich",outcome="ok"}"#,
            ) == Some(5.0)
                && sample(t, r#"sluice_dead_lettered_total{plugin="reject"}"#) == Some(2.0)
                // Each event runs in its own task: the valid payment may
                // settle after the two dead letters.
                && sample(
                    t,
                    r#"sluice_events_handled_total{plugin="reject",outcome="ok"}"#,
                ) == Some(1.0)
                && sample(t, r#"sluice_events_in_flight{plugin="enrich"}"#) == Some(0.0)
        },
    )
    .await;
    let families = parse_prometheus(&text);
    for name in [
        "sluice_events_received_total",
        "sluice_events_handled_total",
        "sluice_handler_duration_seconds",
        "sluice_instantiate_duration_seconds",
        "sluice_events_in_flight",
        "sluice_retries_total",
        "sluice_dead_lettered_total",
        "sluice_dedup_hits_total",
        "sluice_plugin_reloads_total",
        "sluice_plugin_reload_failures_total",
        "sluice_limit_violations_total",
        "sluice_nats_connected",
        "sluice_nats_reconnects_total",
        "sluice_plugins",
    ] {
        assert!(
            families.contains(name),
            "metric family {name} missing:\n{text}"
        );
    }
    let get = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no sample {series}:\n{text}"))
    };
    assert_eq!(get(r#"sluice_events_received_total{plugin="enrich"}"#), 5.0);
    assert_eq!(get(r#"sluice_events_received_total{plugin="reject"}"#), 3.0);
    assert_eq!(
        get(r#"sluice_events_handled_total{plugin="reject",outcome="permanent"}"#),
        2.0
    );
    assert_eq!(
        get(r#"sluice_events_handled_total{plugin="reject",outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        get(r#"sluice_handler_duration_seconds_count{plugin="enrich"}"#),
        5.0
    );
    assert_eq!(
        get(r#"sluice_handler_duration_seconds_bucket{plugin="enrich",le="+Inf"}"#),
        5.0
    );
    assert!(get(r#"sluice_handler_duration_seconds_sum{plugin="enrich"}"#) > 0.0);
    assert_eq!(
        get(r#"sluice_instantiate_duration_seconds_count{plugin="reject"}"#),
        3.0
    );
    assert_eq!(get(r#"sluice_published_total{plugin="enrich"}"#), 5.0);
    assert_eq!(get(r#"sluice_events_in_flight{plugin="enrich"}"#), 0.0);
    assert_eq!(
        get(r#"sluice_retries_total{plugin="reject"}"#),
        0.0,
        "permanent: no retry"
    );
    assert_eq!(get(r#"sluice_plugin_reloads_total{plugin="enrich"}"#), 0.0);
    assert_eq!(
        get(r#"sluice_limit_violations_total{plugin="enrich",limit="memory"}"#),
        0.0
    );
    assert_eq!(get(r#"sluice_plugins{state="failed"}"#), 1.0);
    assert_eq!(get(r#"sluice_plugins{state="serving"}"#), 2.0);
    assert_eq!(get("sluice_nats_connected"), 1.0);

    // The JSON status carries the same counters.
    let plugins: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/plugins").await.1).unwrap();
    let enrich = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "enrich")
        .unwrap();
    assert_eq!(enrich["stats"]["succeeded"], 5);
    assert_eq!(enrich["mode"], "core");
    host.shutdown().await.unwrap();
}

/// The value of the sample line starting with exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Check `text` is Prometheus text format 0.0.4 (comments, and samples of a
/// declared family with a float value; histogram buckets cumulative and
/// ending in `+Inf` = `_count`); return the family names.
fn parse_prometheus(text: &str) -> BTreeSet<String> {
    let mut families = BTreeMap::<String, String>::new();
    let mut buckets = BTreeMap::<String, Vec<f64>>::new();
    let mut counts = BTreeMap::<String, f64>::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(_), Some(_)) => {}
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "bad TYPE line: {line}"
                    );
                    families.insert(name.to_string(), kind.to_string());
                }
                _ => panic!("bad comment line: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in: {line}"
            );
        }
        let family = families
            .keys()
            .find(|f| {
                name == f.as_str()
                    || ["_bucket", "_count", "_sum"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(f.as_str()))
            })
            .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"));
        if families[family] == "histogram" {
            let key = series
                .replace("_bucket", "")
                .replace("_count", "")
                .split(",le=")
                .next()
                .unwrap()
                .trim_end_matches('}')
                .to_string();
            if name.ends_with("_bucket") {
                buckets.entry(key).or_default().push(value);
            } else if name.ends_with("_count") {
                counts.insert(key, value);
            }
        }
    }
    for (series, values) in &buckets {
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "buckets of {series} are not cumulative: {values:?}"
        );
        let count = counts
            .iter()
            .find(|(k, _)| k.trim_end_matches('}') == series.as_str())
            .map(|(_, v)| *v);
        assert_eq!(
            values.last().copied(),
            count,
            "+Inf bucket of {series} = _count"
        );
    }
    families.into_keys().collect()
}
