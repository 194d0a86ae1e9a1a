//! Python and JavaScript plugins, built from plugins/ with their SDKs, under
//! the same delivery guarantees as Rust ones: the same output bytes as the
//! Rust `enrich`, their errors dead-lettered with the right class and
//! message, and a hot reload under load that loses nothing.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use sluice::dlq::{self, Filter};
use sluice_e2e::polyglot::polyglot_wasm;
use sluice_e2e::{
    NatsServer, PluginDir, create_stream, eventually, eventually_async, read_stream,
    start_host_patient, stream_messages, variant, version_of,
};

const WAIT: Duration = Duration::from_secs(60);

/// Orders every implementation must enrich to the same bytes.
const ORDERS: &[&str] = &[
    r#"{"id":"o-1","quantity":3,"unit_price":2.5}"#,
    r#"{"unit_price":0.1,"quantity":3,"id":"o-2","note":"zebra first, keys come out sorted"}"#,
    r#"{"id":"o-3","quantity":-7,"unit_price":1e-7,"tags":["a","b"],"nested":{"z":1,"a":[true,false,null]}}"#,
    r#"{"id":"o-4","quantity":12345678901,"unit_price":123456789.123,"small":-9007199254740991}"#,
    r#"{"id":"o-5","text":"caf\u00e9 \u2603 \ud83d\ude00 tab\t quote\" back\\ ctl\u0001 del\u007f","quantity":"3"}"#,
    r#"{"id":"o-6","quantity":1.5e300,"unit_price":1e300,"tiny":5e-324,"exp":1.2345e21}"#,
    r#"{}"#,
    r#"{"id":"o-8","quantity":true,"unit_price":2}"#,
];

/// Orders JavaScript cannot reproduce: `10.0` and `10` are the same JS
/// number, and integers past 2^53 lose digits.
const ORDERS_NOT_JS: &[&str] = &[
    r#"{"id":"o-9","quantity":4,"unit_price":10.0,"ratio":1.0,"big_float":1e10}"#,
    r#"{"id":"o-10","big":18446744073709551615,"neg":-9223372036854775808}"#,
];

fn enrich_manifest() -> &'static str {
    "subjects = [\"orders.*\"]\npublish = [\"orders.enriched.>\"]"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_enrich_publish_exactly_the_bytes_of_the_rust_plugin() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add("enrich", "enrich", enrich_manifest())
        .add_file("enrich-py", &polyglot_wasm("enrich-py"), enrich_manifest())
        .add_file("enrich-js", &polyglot_wasm("enrich-js"), enrich_manifest());
    let host = start_host_patient(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut out = client.subscribe("orders.enriched.>").await.unwrap();
    client.flush().await.unwrap();

    let events: Vec<(&str, &str)> = ORDERS
        .iter()
        .map(|o| ("orders.created", *o))
        .chain(ORDERS_NOT_JS.iter().map(|o| ("orders.updated", *o)))
        .collect();
    for (i, (subject, order)) in events.iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("order-{i}").as_str());
        client
            .publish_with_headers(*subject, headers, Bytes::from(order.to_string()))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    // (idempotency key, plugin) -> (subject, content type, payload)
    let expected = events.len() * 3;
    let mut outputs = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while outputs.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(m)) = tokio::time::timeout(left, out.next()).await else {
            panic!(
                "only {} of {expected} outputs arrived; stats: {:?} {:?} {:?}",
                outputs.len(),
                host.stats("enrich"),
                host.stats("enrich-py"),
                host.stats("enrich-js")
            );
        };
        let headers = m.headers.clone().unwrap_or_default();
        let payload = String::from_utf8(m.payload.to_vec()).expect("UTF-8 JSON");
        let key: serde_json::Value = serde_json::from_str(&payload).unwrap();
        outputs.insert(
            (
                key["idempotency_key"].as_str().unwrap().to_string(),
                headers.get("Sluice-Plugin").unwrap().to_string(),
            ),
            (
                m.subject.to_string(),
                headers.get("Content-Type").map(|v| v.to_string()),
                payload,
            ),
        );
    }
    for (i, (subject, order)) in events.iter().enumerate() {
        let key = format!("order-{i}");
        let rust = &outputs[&(key.clone(), "enrich".to_string())];
        assert_eq!(
            rust.1.as_deref(),
            Some("application/json"),
            "the Rust plugin's output for {order}"
        );
        assert_eq!(
            rust.0,
            subject.replace("orders.", "orders.enriched."),
            "{order}"
        );
        let mut langs = vec!["enrich-py"];
        if !ORDERS_NOT_JS.contains(order) {
            langs.push("enrich-js");
        }
        for plugin in langs {
            let other = &outputs[&(key.clone(), plugin.to_string())];
            assert_eq!(
                other, rust,
                "{plugin} differs from the Rust plugin for input {order}"
            );
        }
    }
    // Bad input is a permanent error in every language, as in Rust.
    for plugin in ["enrich", "enrich-py", "enrich-js"] {
        assert_eq!(host.stats(plugin).unwrap().failed_attempts, 0, "{plugin}");
    }
    host.shutdown().await.unwrap();
}

fn flaky_manifest(lang: &str) -> String {
    format!(
        "subjects = [\"jobs-{lang}.*\"]\npublish = [\"jobs-{lang}.*.done\"]\nmode = \"jetstream\"\n\
         [jetstream]\nstream = \"JOBS_{}\"\ncreate_stream = true\n\
         [retry]\nmax_attempts = 3\ninitial_delay = \"10ms\"\nmax_delay = \"50ms\"",
        lang.to_uppercase()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_errors_reach_the_dlq_with_their_class_and_message() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    // The outbox of a JetStream plugin is confirmed by a stream.
    create_stream(&js, "DONE", &["jobs-py.*.done", "jobs-js.*.done"]).await;
    let dir = PluginDir::new();
    dir.add_file(
        "flaky-py",
        &polyglot_wasm("flaky-py"),
        &flaky_manifest("py"),
    )
    .add_file(
        "flaky-js",
        &polyglot_wasm("flaky-js"),
        &flaky_manifest("js"),
    );
    let host = start_host_patient(&nats.url(), dir.path()).await;

    let cases = [
        ("retry", "x-fail-times", "99"),
        ("perm", "x-permanent", "order 7 has no customer"),
        ("crash", "x-throw", "unexpected shape 42"),
        ("ok", "x-fail-times", "2"),
    ];
    for lang in ["py", "js"] {
        for (job, header, value) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(header, value);
            js.publish_with_headers(
                format!("jobs-{lang}.{job}"),
                headers,
                Bytes::from_static(b"{}"),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
    let dead_lettered = || {
        ["flaky-py", "flaky-js"].iter().all(|p| {
            let stats = host.stats(p).unwrap();
            stats.dead_lettered == 3 && stats.succeeded == 1
        })
    };
    let deadline = Instant::now() + WAIT;
    while !dead_lettered() {
        assert!(
            Instant::now() < deadline,
            "three dead letters and one success per language expected; stats: {:?} {:?}",
            host.stats("flaky-py"),
            host.stats("flaky-js")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (lang, plugin) in [("py", "flaky-py"), ("js", "flaky-js")] {
        let entries = dlq::list(
            &js,
            "SLUICE_DLQ",
            &Filter {
                plugin: Some(plugin.into()),
                ..Filter::default()
            },
        )
        .await
        .unwrap();
        let by_subject: BTreeMap<String, _> = entries
            .iter()
            .map(|e| (e.letter.subject.clone(), &e.letter))
            .collect();
        let retry = by_subject[&format!("jobs-{lang}.retry")];
        assert_eq!(
            (
                retry.error_class.as_str(),
                retry.attempts,
                retry.error.as_str()
            ),
            ("retryable", 3, "simulated failure 3 of 99"),
            "{plugin}"
        );
        let perm = by_subject[&format!("jobs-{lang}.perm")];
        assert_eq!(
            (
                perm.error_class.as_str(),
                perm.attempts,
                perm.error.as_str()
            ),
            ("permanent", 1, "order 7 has no customer"),
            "{plugin}"
        );
        let crash = by_subject[&format!("jobs-{lang}.crash")];
        assert_eq!(
            (crash.error_class.as_str(), crash.attempts),
            ("trap", 3),
            "{plugin}: {}",
            crash.error
        );
        assert!(
            crash.error.contains("unexpected shape 42"),
            "{plugin}: the exception's message is in the dead letter: {}",
            crash.error
        );
        assert!(!by_subject.contains_key(&format!("jobs-{lang}.ok")));
        let stats = host.stats(plugin).unwrap();
        assert_eq!(stats.succeeded, 1, "{plugin}: {stats:?}");
    }
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_swapped_under_load_loses_no_event() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "DONE", &["load.*.done"]).await;
    let base = std::fs::read(polyglot_wasm("flaky-py")).unwrap();
    let versions = [variant(&base, 1), variant(&base, 2)];
    let dir = PluginDir::new();
    dir.write("flaky-py.wasm", &versions[0]).write(
        "flaky-py.toml",
        b"subjects = [\"load.*\"]\npublish = [\"load.*.done\"]\nmode = \"jetstream\"\n\
          max_concurrency = 16\n[jetstream]\nstream = \"LOAD\"\ncreate_stream = true",
    );
    let host = start_host_patient(&nats.url(), dir.path()).await;

    // Events keep coming (each confirmed by the stream) until the last swap
    // has served for a while; JetStream holds whatever the host has not taken
    // yet, so the outcome does not depend on how fast either side runs.
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let (js, publishing) = (js.clone(), publishing.clone());
        tokio::spawn(async move {
            let mut id = 0u64;
            while publishing.load(Ordering::Relaxed) {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("ev-{id}").as_str());
                js.publish_with_headers("load.e", headers, Bytes::from(id.to_string()))
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                id += 1;
                if id.is_multiple_of(20) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            id
        })
    };
    let serving = |host: &sluice::service::HostHandle| {
        host.plugins()
            .into_iter()
            .find(|p| p.name == "flaky-py" && p.state == "serving")
            .and_then(|p| p.version)
    };
    let mut handled_before = 0;
    for swap in 1..=3usize {
        eventually_async!(
            WAIT,
            format!("events handled before swap {swap}"),
            stream_messages(&js, "DONE").await >= handled_before + 100
        );
        let next = &versions[swap % 2];
        std::fs::write(dir.path().join("flaky-py.wasm"), next).unwrap();
        let expected = version_of(next);
        eventually(WAIT, &format!("swap {swap} serving"), || {
            serving(&host).as_deref() == Some(expected.as_str())
        })
        .await;
        handled_before = stream_messages(&js, "DONE").await;
    }
    eventually_async!(
        WAIT,
        "events handled after the last swap",
        stream_messages(&js, "DONE").await >= handled_before + 100
    );
    publishing.store(false, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    eventually_async!(
        Duration::from_secs(120),
        "every event handled",
        stream_messages(&js, "DONE").await == published
    );
    let done = read_stream(&js, "DONE").await;
    let ids: HashSet<u64> = done
        .iter()
        .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (0..published).collect(), "an event was lost");
    let handled_by: HashSet<String> = done
        .iter()
        .map(|m| {
            m.headers
                .as_ref()
                .and_then(|h| h.get("Sluice-Plugin-Version"))
                .expect("the host sets Sluice-Plugin-Version")
                .to_string()
        })
        .collect();
    assert_eq!(
        handled_by,
        versions.iter().map(|v| version_of(v)).collect(),
        "both versions served"
    );
    let stats = host.stats("flaky-py").unwrap();
    assert_eq!(stats.failed_attempts, 0, "{stats:?}");
    assert_eq!(host.reload_counters().reload_failures, 0);
    eprintln!("{published} events, 3 swaps of a Python plugin, none lost");
    host.shutdown().await.unwrap();
}
