//! Contract 0.2.0 capabilities from the Python and JavaScript SDKs, against
//! the Rust plugin they mirror: `plugins/totals-py` and `plugins/totals-js`
//! keep the same state totals as `plugins/totals` (a failed attempt's write vanishes, a success commits
//! the compare-and-swap), and state refused to a plugin that did not ask is
//! counted and permanent in both; `settings-py`/`settings-js` read the
//! configuration (operator value over manifest, secrets, unset keys) into the
//! Rust `settings` plugin's JSON bytes; `ask-py`/`ask-js` request like `ask`
//! (the answer, and the same refusal outside the grants).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use sluice_e2e::polyglot::polyglot_wasm;
use sluice_e2e::{
    NatsServer, PluginDir, eventually, next_message, start_host_configured_patient,
    start_host_patient,
};

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

/// Install `base` (a Rust plugin crate) or its `<base>-py` / `<base>-js` twin as plugin `base`.
fn install_twin(totals: Totals, dir: &PluginDir, base: &str, manifest: &str) {
    match totals {
        Totals::Rust => dir.add(base, base, manifest),
        Totals::Python => dir.add_file(base, &polyglot_wasm(&format!("{base}-py")), manifest),
        Totals::Js => dir.add_file(base, &polyglot_wasm(&format!("{base}-js")), manifest),
    };
}

/// `settings` (or its twin) reads the operator's value over the manifest's,
/// an operator secret, a manifest value and an unset key, and publishes
/// them as JSON: the bytes, whatever the language.
async fn settings_read(lang: Totals) -> Bytes {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    install_twin(
        lang,
        &dir,
        "settings",
        "subjects = [\"settings.in\"]\npublish = [\"settings.out\"]\n[config]\ngreeting = \"hello\"\napi_url = \"http://manifest.example\"\nretries = 3\n",
    );
    let secret = dir.path().join("api-token");
    std::fs::write(&secret, "file-token\n").unwrap();
    let host = start_host_configured_patient(
        &nats.url(),
        dir.path(),
        &format!(
            "[plugin.settings]\nplugin_config = {{ api_url = \"http://operator.example\" }}\nplugin_secrets = {{ api_token = \"file:{}\" }}\n",
            secret.display()
        ),
    )
    .await;
    let client = nats.client().await;
    let mut out = client.subscribe("settings.out").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish(
            "settings.in",
            Bytes::from_static(b"greeting,api_url,api_token,retries,missing"),
        )
        .await
        .unwrap();
    let payload = next_message(&mut out, WAIT, "the settings read")
        .await
        .payload;
    drop(host);
    payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_read_config_like_rust() {
    let rust = settings_read(Totals::Rust).await;
    let text = String::from_utf8_lossy(&rust);
    for part in [
        r#""api_token":"file-token""#,
        r#""api_url":"http://operator.example""#,
        r#""greeting":"hello""#,
        r#""missing":null"#,
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    for lang in [Totals::Python, Totals::Js] {
        let got = settings_read(lang).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&rust),
            "{lang:?}"
        );
    }
}

/// `ask` (or its twin) asks the Rust `respond` plugin; a request outside its
/// grants is published as `refused: <why>`. Returns (answer, refusal, refused_requests).
async fn ask_and_be_refused(lang: Totals) -> (Bytes, Bytes, u64) {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    install_twin(
        lang,
        &dir,
        "ask",
        "subjects = [\"ask.>\"]\npublish = [\"asked.>\"]\nrequest = [\"svc.>\"]",
    );
    dir.add("respond", "respond", "subjects = [\"svc.>\", \"other.>\"]");
    let host = start_host_patient(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut asked = client.subscribe("asked.>").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("ask.svc.echo", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let answer = next_message(&mut asked, WAIT, "the answer the plugin got").await;
    assert_eq!(answer.subject.as_str(), "asked.svc.echo", "{lang:?}");
    client
        .publish("ask.other.echo", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let refusal = next_message(&mut asked, WAIT, "the refusal").await;
    assert_eq!(refusal.subject.as_str(), "asked.other.echo", "{lang:?}");
    let refused = host.stats("ask").unwrap().refused_requests;
    (answer.payload, refusal.payload, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_request_like_rust() {
    let rust = ask_and_be_refused(Totals::Rust).await;
    assert_eq!(&rust.0[..], b"re: hello");
    let text = String::from_utf8_lossy(&rust.1);
    assert!(
        text.starts_with("refused:") && text.contains("other.echo"),
        "{text}"
    );
    assert_eq!(rust.2, 1);
    for lang in [Totals::Python, Totals::Js] {
        assert_eq!(ask_and_be_refused(lang).await, rust, "{lang:?}");
    }
}
