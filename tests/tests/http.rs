//! Outbound HTTP end to end (contract 0.2.0, `wasi:http/outgoing-handler`):
//! plugins (`fetch`, `charge`) call a real HTTP server the test starts on
//! loopback. A granted origin is reached and an ungranted one refused and
//! counted; the operator's `http_allow` beats the manifest; loopback is
//! refused unless the operator allows private addresses; the attempt's
//! deadline cuts a slow response; an oversized response is refused; the
//! per-event request limit holds; and the SDK's `Idempotency-Key` is sent
//! and stays the same across the retries of one event.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use sluice::service::HostHandle;
use sluice_e2e::http_server::{Reply, TestHttpServer};
use sluice_e2e::{
    NatsServer, PluginDir, eventually, next_message, plugin_wasm, start_host_configured,
};

const WAIT: Duration = Duration::from_secs(20);

/// Loopback is private: every test that reaches its server allows it.
const ALLOW_PRIVATE: &str = "http_allow_private = true\n";

/// The `fetch` test plugin granted `origins`, with extra manifest lines.
fn fetch_manifest(origins: &[String], extra: &str) -> String {
    let quoted: Vec<String> = origins.iter().map(|o| format!("{o:?}")).collect();
    format!(
        "subjects = [\"fetch.in\"]\npublish = [\"fetched.out\"]\nhttp = [{}]\n{extra}",
        quoted.join(", ")
    )
}

/// One `fetch` plugin on its own nats-server and host, with a subscriber on
/// what it publishes. Fields drop in order: the host stops before its broker.
struct FetchRig {
    host: HostHandle,
    client: async_nats::Client,
    out: async_nats::Subscriber,
    _dir: PluginDir,
    _nats: NatsServer,
}

impl FetchRig {
    async fn start(manifest: &str, config: &str) -> FetchRig {
        let nats = NatsServer::start();
        let dir = PluginDir::new();
        dir.add("fetch", "fetch", manifest);
        let host = start_host_configured(&nats.url(), dir.path(), config).await;
        let client = nats.client().await;
        let out = client.subscribe("fetched.out").await.unwrap();
        client.flush().await.unwrap();
        FetchRig {
            host,
            client,
            out,
            _dir: dir,
            _nats: nats,
        }
    }

    /// Asks the plugin to fetch `urls` (one per line).
    async fn fetch(&self, urls: String) {
        self.client
            .publish("fetch.in", Bytes::from(urls))
            .await
            .unwrap();
    }

    async fn fetched(&mut self, what: &str) -> Bytes {
        next_message(&mut self.out, WAIT, what).await.payload
    }
}

/// A server answering `200 hello` to everything.
async fn hello_server() -> TestHttpServer {
    TestHttpServer::start(|_, _| Reply::new(200, "hello")).await
}

async fn gave_up(host: &HostHandle, plugin: &str) -> String {
    eventually(WAIT, "the event dead-lettered", || {
        host.stats(plugin).is_some_and(|s| s.dead_lettered >= 1)
    })
    .await;
    host.last_gave_up(plugin)
        .expect("a failure is kept")
        .message
}

fn http_refusals(host: &HostHandle, plugin: &str) -> String {
    let needle =
        format!("sluice_capability_refusals_total{{plugin=\"{plugin}\",capability=\"http\"}}");
    host.metrics()
        .render()
        .lines()
        .find(|l| l.starts_with(&needle))
        .unwrap_or_else(|| panic!("no {needle} in the metrics"))
        .to_string()
}

fn sluice(args: &[&str]) -> String {
    let out = sluice_e2e::sluice_command(env!("CARGO_BIN_EXE_sluice-e2e-host"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn check_lists_http_and_config_check_shows_the_effective_grants() {
    let charge = plugin_wasm("charge");
    let checked = sluice(&["check", charge.to_str().unwrap()]);
    assert!(
        checked.contains("capabilities: publish, config, http"),
        "{checked}"
    );
    assert!(
        checked.contains("wasi:http/outgoing-handler@0.2"),
        "{checked}"
    );

    let dir = PluginDir::new();
    dir.add(
        "fetch",
        "fetch",
        "subjects = [\"fetch.in\"]\npublish = [\"fetched.out\"]\nrequest = [\"svc.>\"]\nstate = true\nhttp = [\"https://*.example.com\", \"http://127.0.0.1:*\"]",
    )
    .add("quiet", "fetch", "subjects = [\"q\"]");
    let conf = dir.path().join("host.conf");
    std::fs::write(
        &conf,
        format!(
            "plugins = {:?}\nhttp_allow = [\"https://api.example.com\", \"http://127.0.0.1:8080\"]\n[plugin.fetch]\npublish_allow = [\"fetched.>\"]\n",
            dir.path().display().to_string()
        ),
    )
    .unwrap();
    let shown = sluice(&["config", "check", conf.to_str().unwrap()]);
    let fetch = shown
        .split("# [fetch]")
        .nth(1)
        .unwrap_or_else(|| panic!("no grants of fetch in:\n{shown}"));
    let fetch = fetch.split("# [quiet]").next().unwrap();
    assert!(
        fetch.contains(
            "#   http = [\"http://127.0.0.1:8080\", \"https://api.example.com\"]; public addresses only"
        ),
        "manifest ∩ operator: {fetch}"
    );
    assert!(
        fetch.contains(
            "#   publish = [\"fetched.out\"] (capped by publish_allow = [\"fetched.>\"])"
        ),
        "{fetch}"
    );
    assert!(fetch.contains("#   request = [\"svc.>\"]"), "{fetch}");
    assert!(fetch.contains("#   state = granted"), "{fetch}");
    let quiet = shown.split("# [quiet]").nth(1).unwrap();
    assert!(
        quiet.contains("#   http = []") && quiet.contains("#   state = not asked"),
        "{quiet}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_origin_is_reached_and_an_ungranted_one_is_refused_and_counted() {
    let granted = hello_server().await;
    let other = hello_server().await;
    let mut rig = FetchRig::start(
        &fetch_manifest(
            &[granted.origin()],
            "[retry]\nmax_attempts = 3\ninitial_delay = \"10ms\"",
        ),
        ALLOW_PRIVATE,
    )
    .await;

    // Keyed and unkeyed (`-` prefix) requests both reach the granted origin.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "fetch-1");
    let urls = format!("{0}/a\n-{0}/b", granted.origin());
    rig.client
        .publish_with_headers("fetch.in", headers, Bytes::from(urls))
        .await
        .unwrap();
    let fetched = rig.fetched("what the plugin fetched").await;
    assert_eq!(&fetched[..], b"200 5\n200 5\n");
    let seen = granted.received();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/a")
    );
    assert_eq!(seen[0].header("idempotency-key"), Some("fetch-1"));
    assert_eq!(seen[1].header("idempotency-key"), None, "opted out");
    assert_eq!(
        http_refusals(&rig.host, "fetch"),
        format!("sluice_capability_refusals_total{{plugin=\"fetch\",capability=\"http\"}} 0")
    );

    // Another port of the same host is another origin: refused, not retried.
    rig.fetch(format!("{}/x", other.origin())).await;
    let why = gave_up(&rig.host, "fetch").await;
    assert!(
        why.contains("refused") && why.contains(&other.origin()) && why.contains("http"),
        "{why}"
    );
    assert!(other.received().is_empty(), "nothing left the sandbox");
    let stats = rig.host.stats("fetch").unwrap();
    assert_eq!(stats.refused_http, 1);
    assert_eq!(
        stats.failed_attempts, 1,
        "a refusal is permanent: {stats:?}"
    );
    assert!(http_refusals(&rig.host, "fetch").ends_with(" 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_http_allow_beats_the_manifest() {
    let allowed = hello_server().await;
    let capped = hello_server().await;
    // The manifest asks for every port of loopback; the operator allows one.
    let config = format!(
        "{ALLOW_PRIVATE}[plugin.fetch]\nhttp_allow = [\"{}\"]\n",
        allowed.origin()
    );
    let mut rig =
        FetchRig::start(&fetch_manifest(&["http://127.0.0.1:*".into()], ""), &config).await;
    rig.fetch(format!("{}/ok", allowed.origin())).await;
    assert_eq!(&rig.fetched("the allowed fetch").await[..], b"200 5\n");
    rig.fetch(format!("{}/no", capped.origin())).await;
    let why = gave_up(&rig.host, "fetch").await;
    assert!(why.contains("refused"), "{why}");
    assert!(capped.received().is_empty());
    assert_eq!(rig.host.stats("fetch").unwrap().refused_http, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_refused_unless_the_operator_allows_private_addresses() {
    let server = hello_server().await;
    // No `http_allow_private`: granted by the manifest, but loopback.
    let rig = FetchRig::start(&fetch_manifest(&[server.origin()], ""), "").await;
    rig.fetch(format!("{}/x", server.origin())).await;
    let why = gave_up(&rig.host, "fetch").await;
    assert!(
        why.contains("private") && why.contains("http_allow_private"),
        "{why}"
    );
    assert!(server.received().is_empty(), "never connected");
    assert_eq!(rig.host.stats("fetch").unwrap().refused_http, 1);
    assert!(http_refusals(&rig.host, "fetch").ends_with(" 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempts_deadline_cuts_a_slow_response_and_the_host_carries_on() {
    let server = TestHttpServer::start(|r, _| {
        if r.path == "/slow" {
            Reply::new(200, "late").after(Duration::from_secs(30))
        } else {
            Reply::new(200, "hello")
        }
    })
    .await;
    let mut rig = FetchRig::start(
        &fetch_manifest(
            &[server.origin()],
            "timeout = \"1s\"\n[retry]\nmax_attempts = 2\ninitial_delay = \"10ms\"",
        ),
        ALLOW_PRIVATE,
    )
    .await;
    rig.fetch(format!("{}/slow", server.origin())).await;
    let why = gave_up(&rig.host, "fetch").await;
    assert!(why.contains("did not answer in time"), "{why}");
    let stats = rig.host.stats("fetch").unwrap();
    assert_eq!(
        stats.failed_attempts, 2,
        "retried once, then given up: {stats:?}"
    );
    assert_eq!(
        server
            .received()
            .iter()
            .filter(|r| r.path == "/slow")
            .count(),
        2,
        "each attempt asked again"
    );
    // The host is fine: the next event goes through.
    rig.fetch(format!("{}/ok", server.origin())).await;
    let fetched = rig.fetched("a fetch after the slow one").await;
    assert_eq!(&fetched[..], b"200 5\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_size_limit_is_refused() {
    let server = TestHttpServer::start(|r, _| match r.path.as_str() {
        "/big" => Reply::new(200, vec![b'x'; 64 << 10]),
        "/big-chunked" => Reply::new(200, vec![b'x'; 64 << 10]).chunked(),
        _ => Reply::new(200, vec![b'x'; 1000]),
    })
    .await;
    let mut rig = FetchRig::start(
        &fetch_manifest(
            &[server.origin()],
            "max_http_response = \"1KiB\"\n[retry]\nmax_attempts = 1",
        ),
        ALLOW_PRIVATE,
    )
    .await;
    rig.fetch(format!("{}/small", server.origin())).await;
    let fetched = rig.fetched("a response under the limit").await;
    assert_eq!(&fetched[..], b"200 1000\n");
    for (n, path) in [(1, "/big"), (2, "/big-chunked")] {
        rig.fetch(format!("{}{path}", server.origin())).await;
        eventually(WAIT, "the oversized response refused", || {
            rig.host
                .stats("fetch")
                .is_some_and(|s| s.dead_lettered == n)
        })
        .await;
        let why = rig.host.last_gave_up("fetch").unwrap().message;
        assert!(
            why.contains("larger than the plugin's limit of 1024 bytes")
                && why.contains("max_http_response"),
            "{path}: {why}"
        );
    }
    assert_eq!(rig.host.stats("fetch").unwrap().refused_http, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_event_request_limit_holds() {
    let server = hello_server().await;
    let rig = FetchRig::start(
        &fetch_manifest(
            &[server.origin()],
            "max_http_requests = 2\n[retry]\nmax_attempts = 1",
        ),
        ALLOW_PRIVATE,
    )
    .await;
    rig.fetch(format!("{0}/1\n{0}/2\n{0}/3", server.origin()))
        .await;
    let why = gave_up(&rig.host, "fetch").await;
    assert!(why.contains("max_http_requests"), "{why}");
    let paths: Vec<String> = server.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/1", "/2"], "the third never left");
    assert_eq!(rig.host.stats("fetch").unwrap().refused_http, 1);
}

/// A warm instance carries its HTTP budget from event to event: each event
/// still gets the whole limit, and a refusal counts for its own event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_reused_instance_every_event_gets_the_whole_request_limit() {
    let server = hello_server().await;
    let mut rig = FetchRig::start(
        &fetch_manifest(
            &[server.origin()],
            "isolation = \"reuse\"\nmax_http_requests = 2\n[retry]\nmax_attempts = 1",
        ),
        ALLOW_PRIVATE,
    )
    .await;
    for event in 1..=3 {
        rig.fetch(format!("{0}/{event}a\n{0}/{event}b", server.origin()))
            .await;
        let fetched = rig.fetched("both requests of the event").await;
        assert_eq!(&fetched[..], b"200 5\n200 5\n", "event {event}");
    }
    let stats = rig.host.stats("fetch").unwrap();
    assert_eq!(
        (stats.refused_http, stats.dead_lettered),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(server.received().len(), 6);

    rig.fetch(format!("{0}/x\n{0}/y\n{0}/z", server.origin()))
        .await;
    let why = gave_up(&rig.host, "fetch").await;
    assert!(why.contains("max_http_requests"), "{why}");
    assert_eq!(rig.host.stats("fetch").unwrap().refused_http, 1);
    rig.fetch(format!("{}/after", server.origin())).await;
    let fetched = rig.fetched("the next event, after a refused one").await;
    assert_eq!(&fetched[..], b"200 5\n");
    assert_eq!(
        rig.host.stats("fetch").unwrap().refused_http,
        1,
        "no refusal carried over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_key_is_sent_and_stays_the_same_across_retries() {
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
    let manifest = |path: &str| {
        format!(
            "subjects = [\"orders.{path}\"]\npublish = [\"charges.done\"]\nhttp = [\"{0}\"]\n[config]\nurl = \"{0}/v1/{path}\"\n[retry]\nmax_attempts = 3\ninitial_delay = \"10ms\"\nmax_delay = \"50ms\"\n",
            api.origin()
        )
    };
    let dir = PluginDir::new();
    dir.add("charge", "charge", &manifest("charges")).add(
        "decline",
        "charge",
        &manifest("declined"),
    );
    let host = start_host_configured(&nats.url(), dir.path(), ALLOW_PRIVATE).await;
    let client = nats.client().await;
    let mut done = client.subscribe("charges.done").await.unwrap();
    client.flush().await.unwrap();

    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-42");
    client
        .publish_with_headers(
            "orders.charges",
            headers,
            Bytes::from_static(br#"{"order":42,"amount":1999}"#),
        )
        .await
        .unwrap();
    let msg = next_message(&mut done, WAIT, "the charge").await;
    assert_eq!(&msg.payload[..], br#"{"charged":true,"key":"order-42"}"#);
    let seen = api.received();
    assert_eq!(seen.len(), 2, "a 503, then the retry: {seen:?}");
    for r in &seen {
        assert_eq!(r.header("idempotency-key"), Some("order-42"));
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/charges")
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(&r.body[..], br#"{"amount":1999,"order":42}"#);
    }
    // Counted once the outbox is published, a moment after it arrives.
    eventually(WAIT, "the charge counted", || {
        host.stats("charge").unwrap().succeeded >= 1
    })
    .await;
    let stats = host.stats("charge").unwrap();
    assert_eq!(
        (stats.failed_attempts, stats.retries, stats.succeeded),
        (1, 1, 1)
    );

    // Without a message id the host's own key is sent, the same on each try.
    client
        .publish("orders.charges", Bytes::from_static(br#"{"order":43}"#))
        .await
        .unwrap();
    next_message(&mut done, WAIT, "the second charge").await;
    let keys: Vec<String> = api.received()[2..]
        .iter()
        .map(|r| r.header("idempotency-key").unwrap_or_default().to_string())
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(
        !keys[0].is_empty() && keys[0] != "order-42" && keys[0] == keys[1],
        "{keys:?}"
    );

    // A 4xx is permanent: dead-lettered at once with the API's reason.
    client
        .publish("orders.declined", Bytes::from_static(br#"{"order":44}"#))
        .await
        .unwrap();
    let why = gave_up(&host, "decline").await;
    assert!(
        why.contains("402") && why.contains("card declined"),
        "{why}"
    );
    assert_eq!(host.stats("decline").unwrap().failed_attempts, 1);
}
