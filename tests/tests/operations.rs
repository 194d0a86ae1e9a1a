//! The `sluice` binary run as a service: graceful shutdown under load,
//! trace context continued through a plugin, NATS authentication and TLS,
//! and `sluice config check`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use sluice_e2e::{
    NatsServer, PluginDir, Running, consumer_backlog, create_stream, eventually_async, free_port,
    http_get, next_message, read_stream, stream_messages,
};

fn sluice() -> Command {
    sluice_e2e::sluice_command(env!("CARGO_BIN_EXE_sluice-e2e-host"))
}

fn run(nats_url: &str, plugins: &Path, extra: &[&str]) -> Command {
    let mut cmd = sluice();
    cmd.args(["run", "--nats-url", nats_url, "--plugins"])
        .arg(plugins)
        .args(extra);
    cmd
}

const SLOW_MANIFEST: &str = "subjects = [\"slowjob.in\"]\npublish = [\"slowjob.in.done\"]\nmode = \"jetstream\"\n\
    timeout = \"20s\"\nmax_concurrency = 8\n[jetstream]\nstream = \"SLOWIN\"\nack_wait = \"60s\"\n";

/// A server with the SLOWIN/SLOWOUT streams and a folder with the `slow` plugin.
async fn slow_jobs_setup() -> (NatsServer, async_nats::jetstream::Context, PluginDir) {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    create_stream(&js, "SLOWIN", &["slowjob.in"]).await;
    create_stream(&js, "SLOWOUT", &["slowjob.in.done"]).await;
    let dir = PluginDir::new();
    dir.add("slow", "slow", SLOW_MANIFEST);
    (nats, js, dir)
}

async fn publish_jobs(js: &async_nats::jetstream::Context, n: usize, sleep_ms: u64) {
    for i in 0..n {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("job-{i}").as_str());
        headers.insert("x-sleep-ms", sleep_ms.to_string().as_str());
        js.publish_with_headers("slowjob.in", headers, Bytes::from(format!("job-{i}")))
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// Every job's output exactly once (the out stream drops duplicate ids).
async fn assert_each_job_done_once(js: &async_nats::jetstream::Context, n: usize) {
    let out = read_stream(js, "SLOWOUT").await;
    let jobs: BTreeSet<Vec<u8>> = out.iter().map(|m| m.payload.to_vec()).collect();
    assert_eq!(out.len(), n);
    assert_eq!(jobs.len(), n, "every job exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_and_exits_0_within_the_grace() {
    const JOBS: usize = 240;
    const GRACE: Duration = Duration::from_secs(5);
    let (nats, js, dir) = slow_jobs_setup().await;
    publish_jobs(&js, JOBS, 50).await;

    let mut host = Running::spawn(run(&nats.url(), dir.path(), &["--shutdown-grace", "5s"]));
    host.wait_for("sluice is serving", Duration::from_secs(60));
    eventually_async!(
        Duration::from_secs(60),
        "some jobs done",
        stream_messages(&js, "SLOWOUT").await >= 40
    );
    let signalled = Instant::now();
    host.signal("TERM");
    let status = host.wait_exit(GRACE + Duration::from_secs(5));
    let took = signalled.elapsed();
    assert!(status.success(), "exit status 0 after SIGTERM: {status}");
    assert!(
        took < GRACE,
        "in-flight 50 ms jobs finish well within the grace ({took:?})"
    );
    let done_at_stop = stream_messages(&js, "SLOWOUT").await;
    assert!(
        (done_at_stop as usize) < JOBS,
        "the signal must land mid-stream ({done_at_stop})"
    );
    eprintln!("SIGTERM after {done_at_stop} of {JOBS} jobs; exited 0 in {took:?}");

    // Nothing was lost: a new host finishes every job. ack_wait is 60 s, so
    // finishing well before it proves no message was left unsettled.
    let host = Running::spawn(run(&nats.url(), dir.path(), &[]));
    host.wait_for("sluice is serving", Duration::from_secs(60));
    eventually_async!(
        Duration::from_secs(40),
        "every job done after the restart, without waiting for ack_wait",
        stream_messages(&js, "SLOWOUT").await == JOBS as u64
            && consumer_backlog(&js, "SLOWIN", "sluice-slow").await == (0, 0)
    );
    assert_each_job_done_once(&js, JOBS).await;
    assert!(host.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_shutdown_deadline_running_jetstream_events_are_handed_back() {
    const JOBS: usize = 8;
    let (nats, js, dir) = slow_jobs_setup().await;
    publish_jobs(&js, JOBS, 4_000).await;

    let admin = format!("127.0.0.1:{}", free_port());
    let mut host = Running::spawn(run(
        &nats.url(),
        dir.path(),
        &["--shutdown-grace", "1s", "--admin-addr", &admin],
    ));
    host.wait_for("sluice is serving", Duration::from_secs(60));
    let admin = admin.parse().unwrap();
    eventually_async!(
        Duration::from_secs(20),
        "all 8 jobs in flight",
        http_get(admin, "/metrics")
            .await
            .1
            .contains("sluice_events_in_flight{plugin=\"slow\"} 8")
    );
    let signalled = Instant::now();
    host.signal("TERM");
    let status = host.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    assert!(status.success(), "exit 0 at the deadline: {status}");
    assert!(
        took < Duration::from_secs(4),
        "1 s grace + settling, not the 4 s jobs ({took:?})"
    );
    let lines = host.drain_lines().join("\n");
    assert!(
        lines.contains("handed back (Nak) for redelivery"),
        "{lines}"
    );
    assert_eq!(stream_messages(&js, "SLOWOUT").await, 0, "no job finished");

    let host = Running::spawn(run(&nats.url(), dir.path(), &[]));
    host.wait_for("sluice is serving", Duration::from_secs(60));
    eventually_async!(
        Duration::from_secs(30),
        "the handed-back jobs done by the next host (ack_wait is 60 s)",
        stream_messages(&js, "SLOWOUT").await == JOBS as u64
    );
    assert_each_job_done_once(&js, JOBS).await;
    assert!(host.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_continues_into_plugin_logs_and_published_events() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "enrich",
        "enrich",
        "subjects = [\"orders.created\"]\npublish = [\"orders.enriched.>\"]",
    );
    let host = Running::spawn(run(
        &nats.url(),
        dir.path(),
        &["--log-format", "json", "--log", "info"],
    ));
    host.wait_for("sluice is serving", Duration::from_secs(60));
    let client = nats.client().await;
    let mut derived = client.subscribe("orders.enriched.>").await.unwrap();
    client.flush().await.unwrap();

    let mut headers = HeaderMap::new();
    headers.insert("traceparent", format!("00-{TRACE}-{PARENT}-01").as_str());
    headers.insert("tracestate", "vendor=abc");
    client
        .publish_with_headers(
            "orders.created",
            headers,
            Bytes::from_static(br#"{"id":"t-1"}"#),
        )
        .await
        .unwrap();
    let m = next_message(&mut derived, Duration::from_secs(20), "traced event").await;
    let h = m.headers.as_ref().expect("headers");
    let sent = h
        .get("traceparent")
        .expect("traceparent propagated")
        .as_str();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE, "01"),
        "{sent}"
    );
    assert!(
        parts[2] != PARENT && parts[2].len() == 16,
        "a new span id: {sent}"
    );
    assert_eq!(h.get("tracestate").unwrap().as_str(), "vendor=abc");

    // The plugin's own log record carries the trace id (JSON log line).
    let line = host.wait_for("enriched orders.created", Duration::from_secs(10));
    let record: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(record["target"], "sluice::plugin", "{line}");
    assert_eq!(record["span"]["trace_id"], TRACE, "{line}");
    assert_eq!(record["span"]["plugin"], "enrich", "{line}");

    // Without a traceparent, none is invented on the derived event.
    client
        .publish("orders.created", Bytes::from_static(br#"{"id":"t-2"}"#))
        .await
        .unwrap();
    let m = next_message(&mut derived, Duration::from_secs(20), "untraced event").await;
    assert!(m.headers.as_ref().unwrap().get("traceparent").is_none());
    assert!(host.terminate().success());
}

/// The default log lines (plain text, not a terminal) name the event being
/// handled on each line logged while it is handled, the plugin's own
/// included, with the fields a span would have; lines outside an event name
/// none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_log_lines_name_the_event_they_were_logged_for() {
    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "enrich",
        "enrich",
        "subjects = [\"orders.created\"]\npublish = [\"orders.enriched.>\"]",
    )
    .add(
        "flaky",
        "flaky",
        "subjects = [\"plainjobs.*\"]\npublish = [\"plainjobs.*.done\"]\nmode = \"jetstream\"\n\
         [jetstream]\nstream = \"PLAINJOBS\"\ncreate_stream = true\n\
         [retry]\ninitial_delay = \"50ms\"",
    );
    let host = Running::spawn(run(&nats.url(), dir.path(), &["--log", "info"]));
    let serving = host.wait_for("sluice is serving", Duration::from_secs(60));
    assert!(!serving.contains("event:"), "{serving}");
    let client = nats.client().await;
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{TRACE}-00f067aa0ba902b7-01").as_str(),
    );
    client
        .publish_with_headers(
            "orders.created",
            headers,
            Bytes::from_static(br#"{"id":"p-1"}"#),
        )
        .await
        .unwrap();
    let line = host.wait_for("enriched orders.created", Duration::from_secs(20));
    for part in [
        " INFO event: sluice::plugin: ",
        "otel.kind=\"consumer\" plugin=enrich version=",
        " subject=orders.created key=",
        &format!(" trace_id={TRACE}"),
    ] {
        assert!(line.contains(part), "`{part}` in: {line}");
    }
    assert!(
        !line.contains("stream="),
        "a core event has no position: {line}"
    );

    let mut failing = HeaderMap::new();
    failing.insert("x-fail-times", "1");
    let js = async_nats::jetstream::new(client.clone());
    js.publish_with_headers("plainjobs.a", failing, Bytes::from_static(b"x"))
        .await
        .unwrap()
        .await
        .unwrap();
    let line = host.wait_for("attempt 1 failed", Duration::from_secs(20));
    for part in [
        " WARN event: sluice::trigger::jetstream: attempt 1 failed: simulated failure 1 of 1",
        "error.class=\"retryable\" otel.kind=\"consumer\" plugin=flaky version=",
        " subject=plainjobs.a key=",
        " stream=PLAINJOBS seq=1 trace_id=",
    ] {
        assert!(line.contains(part), "`{part}` in: {line}");
    }
    assert!(host.terminate().success());
}

/// Run the host against `nats` with `args`/`env`: Ok once serving, Err(stderr) once it exited.
fn connects(nats: &NatsServer, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let dir = PluginDir::new();
    let mut cmd = run(&nats.url(), dir.path(), args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut host = Running::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let lines = host.drain_lines();
        if lines.iter().any(|l| l.contains("sluice is serving")) {
            assert!(host.terminate().success());
            return Ok(());
        }
        seen.extend(lines);
        if let Some(status) = host.wait_exit_now() {
            seen.extend(host.drain_lines());
            assert!(!status.success(), "a refused host exits non-zero");
            return Err(seen.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "neither serving nor exited within 30s:\n{}",
        seen.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_nats_is_reachable_with_the_right_credentials_and_refused_clearly_otherwise() {
    // User and password.
    let nats = NatsServer::start_with(
        "authorization {\n  users = [ { user: \"app\", password: \"s3cret-pw\" } ]\n}\n",
    );
    connects(
        &nats,
        &["--nats-user", "app"],
        &[("SLUICE_NATS_PASSWORD", "s3cret-pw")],
    )
    .expect("right user/password");
    let err = connects(
        &nats,
        &["--nats-user", "app"],
        &[("SLUICE_NATS_PASSWORD", "wrong-pw")],
    )
    .unwrap_err();
    assert!(
        err.contains("refused the connection") && err.contains("authorization violation"),
        "{err}"
    );
    assert!(err.contains("nats_password"), "says what to check: {err}");
    assert!(!err.contains("wrong-pw"), "never logs the password: {err}");
    let err = connects(&nats, &[], &[]).unwrap_err();
    assert!(err.contains("requires authentication"), "{err}");

    // Token.
    let nats = NatsServer::start_with("authorization {\n  token: \"t0ken-xyz\"\n}\n");
    connects(&nats, &[], &[("SLUICE_NATS_TOKEN", "t0ken-xyz")]).expect("right token");
    let err = connects(&nats, &[], &[("SLUICE_NATS_TOKEN", "t0ken-bad")]).unwrap_err();
    assert!(
        err.contains("nats_token") && !err.contains("t0ken-bad"),
        "{err}"
    );

    // NKey.
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with(&format!(
        "authorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}\n",
        user.public_key()
    ));
    let seeds = tempfile::tempdir().unwrap();
    let good = seeds.path().join("user.nk");
    let bad = seeds.path().join("stranger.nk");
    std::fs::write(&good, user.seed().unwrap()).unwrap();
    std::fs::write(&bad, stranger.seed().unwrap()).unwrap();
    connects(&nats, &["--nats-nkey-file", good.to_str().unwrap()], &[]).expect("right NKey");
    let err = connects(&nats, &["--nats-nkey-file", bad.to_str().unwrap()], &[]).unwrap_err();
    assert!(
        err.contains("refused the connection") && err.contains("stranger.nk"),
        "{err}"
    );
    assert!(
        !err.contains(&stranger.seed().unwrap()),
        "never logs the seed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_is_reachable_with_the_right_certificates_and_refused_otherwise() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let pki = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = pki.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let ca = |cn: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let (trusted, stranger) = (ca("sluice test CA"), ca("some other CA"));
    let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>, names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(&trusted, vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = leaf(&trusted, vec!["sluice-client".into()]);
    let ca_file = write("ca.pem", trusted.pem());
    let other_ca = write("other-ca.pem", stranger.pem());
    let nats = NatsServer::start_with(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{ca_file}\"\n  verify: true\n}}\n",
        write("server.pem", server_cert),
        write("server-key.pem", server_key),
    ));
    let cert = write("client.pem", client_cert);
    let key = write("client-key.pem", client_key);

    connects(
        &nats,
        &[
            "--nats-tls-ca",
            &ca_file,
            "--nats-tls-cert",
            &cert,
            "--nats-tls-key",
            &key,
        ],
        &[],
    )
    .expect("right CA and client certificate");
    let err = connects(
        &nats,
        &[
            "--nats-tls-ca",
            &other_ca,
            "--nats-tls-cert",
            &cert,
            "--nats-tls-key",
            &key,
        ],
        &[],
    )
    .unwrap_err();
    assert!(
        err.contains("refused the connection") && err.contains("nats_tls_ca"),
        "an untrusted server certificate: {err}"
    );
    let err = connects(&nats, &["--nats-tls-ca", &ca_file], &[]).unwrap_err();
    assert!(
        err.contains("refused the connection"),
        "no client certificate: {err}"
    );
}

/// `sluice config check` on a file holding `text`: (success, stdout, stderr).
fn config_check(text: &str, setup: impl FnOnce(&mut Command)) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("sluice.toml");
    std::fs::write(&conf, text).unwrap();
    let mut cmd = sluice();
    cmd.args(["config", "check"]).arg(&conf);
    setup(&mut cmd);
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_prints_the_effective_config_with_secrets_masked() {
    let (ok, stdout, stderr) = config_check(
        "nats_url = \"nats://app:url-secret@127.0.0.1:4222\"\nshutdown_grace = \"20s\"\nadmin_addr = \"127.0.0.1:9464\"\n",
        |cmd| {
            cmd.args(["--max-concurrency", "7"])
                .env("SLUICE_NATS_TOKEN", "env-secret")
                .env("SLUICE_SHUTDOWN_GRACE", "15s");
        },
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("shutdown_grace = \"15s\""),
        "env beats file: {stdout}"
    );
    assert!(stdout.contains("max_concurrency = 7"), "flag: {stdout}");
    assert!(
        stdout.contains("admin_addr = \"127.0.0.1:9464\""),
        "file: {stdout}"
    );
    assert!(stdout.contains("dedup_ttl = \"1day\""), "default: {stdout}");
    assert!(stdout.contains("nats_token = \"********\""), "{stdout}");
    assert!(
        !stdout.contains("url-secret") && !stdout.contains("env-secret"),
        "{stdout}"
    );
    for (text, key, value) in [
        ("admin_addr = \"everywhere\"\n", "admin_addr", "everywhere"),
        (
            "shutdown_grace = \"soon\"\n",
            "shutdown_grace",
            "sluice.toml",
        ),
        (
            "nats_tls_ca = \"/nonexistent/ca.pem\"\n",
            "nats_tls_ca",
            "/nonexistent/ca.pem",
        ),
    ] {
        let (ok, _, stderr) = config_check(text, |_| {});
        assert!(!ok, "{text}");
        assert!(
            stderr.contains(key) && stderr.contains(value),
            "{text}: {stderr}"
        );
    }
}
