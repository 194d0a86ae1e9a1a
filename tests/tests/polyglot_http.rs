//! Outbound HTTP from the Python and JavaScript SDKs (`sluice.http`, `http`
//! in sluice.js) against the Rust plugins they mirror, on one host each with
//! a real HTTP server on loopback: `plugins/fetch-py` and `plugins/fetch-js`
//! fetch what `plugins/fetch` fetches, send the event's `Idempotency-Key`
//! (or not, when asked), and fail a refused origin and a timeout with the
//! Rust plugin's failure (class and message); `plugins/charge-py` and
//! `plugins/charge-js` post the Rust `charge` plugin's JSON bytes with the
//! same key on every retry, dead-letter a declined card with its text, and
//! fail a missing `url` (`config.require`) with the Rust plugin's failure.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use sluice::engine::invoke::Failure;
use sluice::service::HostHandle;
use sluice_e2e::http_server::{Received, Reply, TestHttpServer};
use sluice_e2e::polyglot::polyglot_wasm;
use sluice_e2e::{NatsServer, PluginDir, eventually, next_message, start_host_configured_patient};

/// Interpreter plugins are slow to start on a busy machine.
const WAIT: Duration = Duration::from_secs(60);

/// Loopback is private: every test reaches its server, so it is allowed.
const ALLOW_PRIVATE: &str = "http_allow_private = true\n";

/// One build of a plugin, installed under its own name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Rust,
    Python,
    Js,
}

const LANGS: [Lang; 3] = [Lang::Rust, Lang::Python, Lang::Js];

impl Lang {
    fn tag(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "py",
            Lang::Js => "js",
        }
    }

    /// Install `base` (the Rust crate; `<base>-py` / `<base>-js` the twins)
    /// as plugin `<base>-<tag>`.
    fn install(self, dir: &PluginDir, base: &str, manifest: &str) -> String {
        let name = format!("{base}-{}", self.tag());
        match self {
            Lang::Rust => dir.add(&name, base, manifest),
            Lang::Python => dir.add_file(&name, &polyglot_wasm(&format!("{base}-py")), manifest),
            Lang::Js => dir.add_file(&name, &polyglot_wasm(&format!("{base}-js")), manifest),
        };
        name
    }
}

fn with_id(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers
}

/// The failure `plugin` gave up with, once it dead-lettered `n` events.
async fn gave_up(host: &HostHandle, plugin: &str, n: u64) -> Failure {
    eventually(WAIT, &format!("{plugin} dead-letters event {n}"), || {
        host.stats(plugin).is_some_and(|s| s.dead_lettered >= n)
    })
    .await;
    host.last_gave_up(plugin)
        .unwrap_or_else(|| panic!("{plugin}: a failure is kept"))
}

/// The `fetch` plugins of every language on one host: plugin `fetch-<tag>`
/// reads `fetch.<tag>` and publishes to `fetched.out`.
struct FetchRig {
    host: HostHandle,
    client: async_nats::Client,
    out: async_nats::Subscriber,
    names: Vec<String>,
    _dir: PluginDir,
    _nats: NatsServer,
}

impl FetchRig {
    async fn start(origins: &[String], extra: &str) -> FetchRig {
        let nats = NatsServer::start();
        let dir = PluginDir::new();
        let quoted: Vec<String> = origins.iter().map(|o| format!("{o:?}")).collect();
        let names = LANGS
            .iter()
            .map(|lang| {
                let manifest = format!(
                    "subjects = [\"fetch.{}\"]\npublish = [\"fetched.out\"]\nhttp = [{}]\n{extra}",
                    lang.tag(),
                    quoted.join(", ")
                );
                lang.install(&dir, "fetch", &manifest)
            })
            .collect();
        let host = start_host_configured_patient(&nats.url(), dir.path(), ALLOW_PRIVATE).await;
        let client = nats.client().await;
        let out = client.subscribe("fetched.out").await.unwrap();
        client.flush().await.unwrap();
        FetchRig {
            host,
            client,
            out,
            names,
            _dir: dir,
            _nats: nats,
        }
    }

    fn name(&self, lang: Lang) -> &str {
        &self.names[LANGS.iter().position(|l| *l == lang).unwrap()]
    }

    async fn fetch(&self, lang: Lang, headers: HeaderMap, urls: String) {
        self.client
            .publish_with_headers(format!("fetch.{}", lang.tag()), headers, Bytes::from(urls))
            .await
            .unwrap();
    }

    async fn fetched(&mut self, lang: Lang) -> Bytes {
        next_message(
            &mut self.out,
            WAIT,
            &format!("what fetch-{} fetched", lang.tag()),
        )
        .await
        .payload
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_fetch_like_rust_and_are_refused_like_rust() {
    let granted = TestHttpServer::start(|_, _| Reply::new(200, "hello")).await;
    let other = TestHttpServer::start(|_, _| Reply::new(200, "hello")).await;
    let mut rig = FetchRig::start(
        &[granted.origin()],
        "[retry]\nmax_attempts = 3\ninitial_delay = \"10ms\"",
    )
    .await;

    let mut refusals = Vec::new();
    for lang in LANGS {
        // A keyed and an unkeyed (`-`) request both reach the granted origin.
        let before = granted.received().len();
        let id = format!("fetch-{}", lang.tag());
        let urls = format!("{0}/a\n-{0}/b", granted.origin());
        rig.fetch(lang, with_id(&id), urls).await;
        assert_eq!(&rig.fetched(lang).await[..], b"200 5\n200 5\n", "{lang:?}");
        let seen: Vec<Received> = granted.received()[before..].to_vec();
        assert_eq!(seen.len(), 2, "{lang:?}: {seen:?}");
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str()),
            ("GET", "/a"),
            "{lang:?}"
        );
        assert_eq!(
            seen[0].header("idempotency-key"),
            Some(id.as_str()),
            "{lang:?}"
        );
        assert_eq!(seen[1].path, "/b", "{lang:?}");
        assert_eq!(
            seen[1].header("idempotency-key"),
            None,
            "{lang:?}: opted out"
        );

        // Another port of loopback is another origin: refused, permanent.
        let plugin = rig.name(lang).to_string();
        rig.fetch(lang, HeaderMap::new(), format!("{}/x", other.origin()))
            .await;
        let failure = gave_up(&rig.host, &plugin, 1).await;
        assert!(
            failure.message.contains("HTTP request refused")
                && failure.message.contains(&other.origin())
                && failure.message.contains("http_allow"),
            "{lang:?}: {failure:?}"
        );
        let stats = rig.host.stats(&plugin).unwrap();
        assert_eq!(stats.refused_http, 1, "{lang:?}: {stats:?}");
        assert_eq!(
            stats.failed_attempts, 1,
            "{lang:?}: a refusal is permanent: {stats:?}"
        );
        refusals.push(failure);
    }
    assert!(other.received().is_empty(), "nothing left the sandbox");
    assert_eq!(refusals[1], refusals[0], "Python fails as Rust does");
    assert_eq!(refusals[2], refusals[0], "JavaScript fails as Rust does");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_retry_a_timed_out_request_like_rust() {
    let server = TestHttpServer::start(|r, _| {
        if r.path.ends_with("/slow") {
            Reply::new(200, "late").after(Duration::from_secs(30))
        } else {
            Reply::new(200, "hello")
        }
    })
    .await;
    let mut rig = FetchRig::start(
        &[server.origin()],
        "timeout = \"1s\"\n[retry]\nmax_attempts = 2\ninitial_delay = \"10ms\"",
    )
    .await;
    let mut timeouts = Vec::new();
    for lang in LANGS {
        let plugin = rig.name(lang).to_string();
        let slow = format!("/{}/slow", lang.tag());
        rig.fetch(lang, HeaderMap::new(), format!("{}{slow}", server.origin()))
            .await;
        let failure = gave_up(&rig.host, &plugin, 1).await;
        assert!(
            failure.message.contains("did not answer in time"),
            "{lang:?}: {failure:?}"
        );
        let stats = rig.host.stats(&plugin).unwrap();
        assert_eq!(
            stats.failed_attempts, 2,
            "{lang:?}: a timeout is retryable (retried once, then given up): {stats:?}"
        );
        let asked = server.received().iter().filter(|r| r.path == slow).count();
        assert_eq!(asked, 2, "{lang:?}: each attempt asked again");
        // The plugin is fine: the next event goes through.
        rig.fetch(lang, HeaderMap::new(), format!("{}/ok", server.origin()))
            .await;
        assert_eq!(&rig.fetched(lang).await[..], b"200 5\n", "{lang:?}");
        timeouts.push(failure);
    }
    for (lang, failure) in LANGS.iter().zip(&timeouts) {
        assert_eq!(failure.class, timeouts[0].class, "{lang:?}: {failure:?}");
        // The URL differs per language; the sentence around it does not.
        let tag = format!("/{}/slow", lang.tag());
        assert_eq!(
            failure.message.replace(&tag, "/slow"),
            timeouts[0].message.replace("/rust/slow", "/slow"),
            "{lang:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_charge_like_rust_with_one_idempotency_key_per_event() {
    let nats = NatsServer::start();
    // The payment API fails the first try of each key, then charges; it
    // refuses a declined card outright.
    let api = TestHttpServer::start(|r, before| {
        let key = r.header("idempotency-key").unwrap_or_default();
        let tries = before
            .iter()
            .filter(|b| b.header("idempotency-key") == Some(key))
            .count();
        if r.path == "/v1/declined" {
            Reply::new(402, "card declined")
        } else if tries == 0 {
            Reply::new(503, "try again")
        } else {
            Reply::new(200, format!("{{\"charged\":true,\"key\":\"{key}\"}}"))
        }
    })
    .await;
    let manifest = |lang: Lang, path: &str| {
        format!(
            "subjects = [\"orders.{tag}.{path}\"]\npublish = [\"charges.done\"]\nhttp = [\"{0}\"]\n[config]\nurl = \"{0}/v1/{path}\"\n[retry]\nmax_attempts = 3\ninitial_delay = \"10ms\"\nmax_delay = \"50ms\"\n",
            api.origin(),
            tag = lang.tag(),
        )
    };
    let dir = PluginDir::new();
    for lang in LANGS {
        lang.install(&dir, "charge", &manifest(lang, "charges"));
        // The same build as `decline-<tag>`, pointed at the declining path.
        let decline = format!("decline-{}", lang.tag());
        match lang {
            Lang::Rust => dir.add(&decline, "charge", &manifest(lang, "declined")),
            Lang::Python => dir.add_file(
                &decline,
                &polyglot_wasm("charge-py"),
                &manifest(lang, "declined"),
            ),
            Lang::Js => dir.add_file(
                &decline,
                &polyglot_wasm("charge-js"),
                &manifest(lang, "declined"),
            ),
        };
        // And as `nourl-<tag>`, without the `url` it requires.
        let nourl = format!("nourl-{}", lang.tag());
        let bare = format!(
            "subjects = [\"orders.{}.nourl\"]\npublish = [\"charges.done\"]\n",
            lang.tag()
        );
        match lang {
            Lang::Rust => dir.add(&nourl, "charge", &bare),
            Lang::Python => dir.add_file(&nourl, &polyglot_wasm("charge-py"), &bare),
            Lang::Js => dir.add_file(&nourl, &polyglot_wasm("charge-js"), &bare),
        };
    }
    let host = start_host_configured_patient(&nats.url(), dir.path(), ALLOW_PRIVATE).await;
    let client = nats.client().await;
    let mut done = client.subscribe("charges.done").await.unwrap();
    client.flush().await.unwrap();

    let mut declines = Vec::new();
    let mut unset = Vec::new();
    for lang in LANGS {
        let tag = lang.tag();
        let plugin = format!("charge-{tag}");
        let key = format!("order-{tag}");
        let before = api.received().len();
        client
            .publish_with_headers(
                format!("orders.{tag}.charges"),
                with_id(&key),
                Bytes::from_static(br#"{"order":42,"amount":1999}"#),
            )
            .await
            .unwrap();
        let msg = next_message(&mut done, WAIT, &format!("the charge of {plugin}")).await;
        assert_eq!(
            String::from_utf8_lossy(&msg.payload),
            format!("{{\"charged\":true,\"key\":\"{key}\"}}"),
            "{lang:?}"
        );
        assert_eq!(
            msg.headers
                .as_ref()
                .and_then(|h| h.get("Content-Type"))
                .map(|v| v.as_str()),
            Some("application/json"),
            "{lang:?}"
        );
        let seen: Vec<Received> = api.received()[before..].to_vec();
        assert_eq!(seen.len(), 2, "{lang:?}: a 503, then the retry: {seen:?}");
        for r in &seen {
            assert_eq!(r.header("idempotency-key"), Some(key.as_str()), "{lang:?}");
            assert_eq!(
                (r.method.as_str(), r.path.as_str()),
                ("POST", "/v1/charges"),
                "{lang:?}"
            );
            assert_eq!(
                r.header("content-type"),
                Some("application/json"),
                "{lang:?}"
            );
            assert_eq!(
                String::from_utf8_lossy(&r.body),
                r#"{"amount":1999,"order":42}"#,
                "{lang:?}: the Rust SDK's JSON bytes"
            );
        }
        // Counted once the outbox is published, a moment after it arrives.
        eventually(WAIT, "the charge counted", || {
            host.stats(&plugin).unwrap().succeeded >= 1
        })
        .await;
        let stats = host.stats(&plugin).unwrap();
        assert_eq!(
            (stats.failed_attempts, stats.retries, stats.succeeded),
            (1, 1, 1),
            "{lang:?}: {stats:?}"
        );

        // Without a message id the host's own key is sent, the same on each try.
        let before = api.received().len();
        client
            .publish(
                format!("orders.{tag}.charges"),
                Bytes::from_static(br#"{"order":43}"#),
            )
            .await
            .unwrap();
        next_message(&mut done, WAIT, &format!("the second charge of {plugin}")).await;
        let keys: Vec<String> = api.received()[before..]
            .iter()
            .map(|r| r.header("idempotency-key").unwrap_or_default().to_string())
            .collect();
        assert_eq!(keys.len(), 2, "{lang:?}: {keys:?}");
        assert!(
            !keys[0].is_empty() && keys[0] != key && keys[0] == keys[1],
            "{lang:?}: {keys:?}"
        );

        // A 4xx is permanent: dead-lettered at once with the API's reason.
        client
            .publish(
                format!("orders.{tag}.declined"),
                Bytes::from_static(br#"{"order":44}"#),
            )
            .await
            .unwrap();
        let decline = format!("decline-{tag}");
        let failure = gave_up(&host, &decline, 1).await;
        assert!(
            failure.message.contains("402") && failure.message.contains("card declined"),
            "{lang:?}: {failure:?}"
        );
        assert_eq!(host.stats(&decline).unwrap().failed_attempts, 1, "{lang:?}");
        declines.push(failure);

        // `config.require` of an unset key: permanent, naming the key.
        client
            .publish(format!("orders.{tag}.nourl"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let nourl = format!("nourl-{tag}");
        let failure = gave_up(&host, &nourl, 1).await;
        assert!(
            failure.message.contains("`url` is not set"),
            "{lang:?}: {failure:?}"
        );
        assert_eq!(host.stats(&nourl).unwrap().failed_attempts, 1, "{lang:?}");
        unset.push(failure);
    }
    assert_eq!(unset[1], unset[0], "Python requires as Rust does");
    assert_eq!(unset[2], unset[0], "JavaScript requires as Rust does");
    assert_eq!(declines[1], declines[0], "Python declines as Rust does");
    assert_eq!(declines[2], declines[0], "JavaScript declines as Rust does");
}
