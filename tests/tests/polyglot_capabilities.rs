//! Contract 0.2.0 capabilities from the Python and JavaScript SDKs, against
//! the Rust plugin they mirror: `plugins/totals-py` and `plugins/totals-js`
//! keep the same state totals as `plugins/totals` (a failed attempt's write vanishes, a success commits
//! the compare-and-swap), and state refused to a plugin that did not ask is
//! counted and permanent in both.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use sluice_e2e::polyglot::polyglot_wasm;
use sluice_e2e::{NatsServer, PluginDir, eventually, next_message, start_host_patient};

const WAIT: Duration = Duration::from_secs(30);

const TOTALS: &str =
    "subjects = [\"totals.add.*\"]\npublish = [\"totals.updated.*\"]\nstate = true\n";

/// Which build of the totals plugin a test installs (as plugin `totals`).
#[derive(Debug, Clone, Copy)]
enum Totals {
    Rust,
    Python,
    Js,
}

impl Totals {
    fn install(self, dir: &PluginDir, manifest: &str) {
        match self {
            Totals::Rust => dir.add("totals", "totals", manifest),
            Totals::Python => dir.add_file("totals", &polyglot_wasm("totals-py"), manifest),
            Totals::Js => dir.add_file("totals", &polyglot_wasm("totals-js"), manifest),
        };
    }
}

fn with_id(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers
}

async fn stored_total(kv: &kv::Store, key: &str) -> Option<String> {
    kv.get(format!("totals.total/{key}"))
        .await
        .unwrap()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Fail one event after its write, then add 2 and 3: the published and
/// stored totals are 2 then 5, whatever the plugin's language.
async fn totals_sum_and_a_failed_write_vanishes(totals: Totals) {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    totals.install(&dir, &format!("{TOTALS}[retry]\nmax_attempts = 1\n"));
    let host = start_host_patient(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let kv = jetstream::new(client.clone())
        .get_key_value("sluice-state")
        .await
        .expect("the host created the state bucket");
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
        "{totals:?}: failed write visible"
    );

    for (id, amount, want) in [("ok-1", "2", "2"), ("ok-2", "3", "5")] {
        client
            .publish_with_headers("totals.add.a", with_id(id), Bytes::from(amount))
            .await
            .unwrap();
        let msg = next_message(&mut updated, WAIT, "the committed total").await;
        assert_eq!(&msg.payload[..], want.as_bytes(), "{totals:?}");
    }
    assert_eq!(
        stored_total(&kv, "a").await.as_deref(),
        Some("5"),
        "{totals:?}"
    );
}

/// Without `state = true` the state call is refused: counted, permanent (one
/// attempt), given up.
async fn state_refused_without_the_grant(totals: Totals) {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    totals.install(
        &dir,
        "subjects = [\"totals.add.*\"]\npublish = [\"totals.updated.*\"]\n",
    );
    let host = start_host_patient(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    client
        .publish("totals.add.x", Bytes::from_static(b"1"))
        .await
        .unwrap();
    let registry = host.registry();
    eventually(WAIT, "the refused event is given up", || {
        registry.stats("totals").is_some_and(|s| s.gave_up == 1)
    })
    .await;
    let stats = registry.stats("totals").unwrap();
    assert_eq!(stats.refused_state, 1, "{totals:?}: {stats:?}");
    assert_eq!(
        stats.failed_attempts, 1,
        "{totals:?}: not-granted is permanent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_totals_match_rust_totals() {
    totals_sum_and_a_failed_write_vanishes(Totals::Rust).await;
    totals_sum_and_a_failed_write_vanishes(Totals::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_state_is_refused_without_the_grant_like_rust() {
    state_refused_without_the_grant(Totals::Rust).await;
    state_refused_without_the_grant(Totals::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_totals_match_rust_totals() {
    totals_sum_and_a_failed_write_vanishes(Totals::Rust).await;
    totals_sum_and_a_failed_write_vanishes(Totals::Js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_state_is_refused_without_the_grant_like_rust() {
    state_refused_without_the_grant(Totals::Rust).await;
    state_refused_without_the_grant(Totals::Js).await;
}
