//! The `sluice` binary as users run it: `check`, `invoke`, and `run`
//! configured by flags, SLUICE_* env vars and a TOML file.

use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use sluice_e2e::{NatsServer, PluginDir, Running, free_port, next_message, plugin_wasm};

fn sluice() -> Command {
    sluice_e2e::sluice_command(env!("CARGO_BIN_EXE_sluice-e2e-host"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_describes_a_plugin_and_its_imports() {
    let out = sluice()
        .arg("check")
        .arg(plugin_wasm("enrich"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("is a sluice plugin"), "{stdout}");
    assert!(stdout.contains("contract: sluice:plugin@0.2.0"), "{stdout}");
    assert!(
        stdout.contains("sluice:plugin/publisher@0.2.0"),
        "imports are listed: {stdout}"
    );
    assert!(stdout.contains("sluice:plugin/handler@0.2.0"), "{stdout}");
}

#[test]
fn check_rejects_bad_files_with_a_reason_naming_the_file() {
    let dir = PluginDir::new();
    dir.write("garbage.wasm", b"hello")
        .write("core.wasm", b"\0asm\x01\0\0\0");
    let cases = [
        (dir.path().join("garbage.wasm"), "not a WebAssembly file"),
        (dir.path().join("core.wasm"), "core WebAssembly module"),
        (
            plugin_wasm("wrong-world"),
            "exports [example:greeter/greet@1.0.0]",
        ),
        (dir.path().join("missing.wasm"), "cannot read"),
    ];
    for (file, needle) in cases {
        let out = sluice().arg("check").arg(&file).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{file:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(needle),
            "{file:?}: expected `{needle}` in {stderr}"
        );
        assert!(
            stderr.contains(file.file_name().unwrap().to_str().unwrap()),
            "{stderr}"
        );
    }
}

#[test]
fn invoke_runs_one_event_and_prints_logs_and_publishes() {
    let dir = PluginDir::new();
    dir.add(
        "enrich",
        "enrich",
        "subjects = [\"orders.created\"]\npublish = [\"orders.enriched.>\"]",
    );
    dir.write("order.json", br#"{"id":"o-9","quantity":2,"unit_price":4}"#);
    let out = sluice()
        .args(["invoke"])
        .arg(dir.path().join("enrich.wasm"))
        .args([
            "--subject",
            "orders.created",
            "--header",
            "Nats-Msg-Id=k-9",
            "--data",
        ])
        .arg(format!("@{}", dir.path().join("order.json").display()))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("outcome: ok"), "{stdout}");
    assert!(stdout.contains("idempotency key: k-9"), "{stdout}");
    assert!(
        stdout.contains("enriched orders.created -> orders.enriched.created"),
        "logs: {stdout}"
    );
    assert!(stdout.contains("published (1):"), "{stdout}");
    assert!(stdout.contains(r#""total":8.0"#), "{stdout}");

    // The manifest beside the file limits grants: a narrower one refuses.
    dir.write(
        "enrich.toml",
        b"subjects = [\"orders.created\"]\npublish = [\"nope.>\"]",
    );
    let out = sluice()
        .args(["invoke"])
        .arg(dir.path().join("enrich.wasm"))
        .args(["--subject", "orders.created", "--data", r#"{"id":"x"}"#])
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("outcome: failed (retryable): publish not granted"),
        "{stdout}"
    );
    assert!(stdout.contains("published (0):"), "{stdout}");
}

#[test]
fn invoke_reports_permanent_errors_and_output() {
    let out = sluice()
        .arg("invoke")
        .arg(plugin_wasm("reject"))
        .args(["--subject", "payments.card", "--data", "not json"])
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("outcome: failed (permanent): payload is not valid JSON"),
        "{stdout}"
    );

    let out = sluice()
        .arg("invoke")
        .arg(plugin_wasm("echo"))
        .args(["--subject", "demo.x", "--data", "hi", "--attempt", "3"])
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("attempt=3"), "{stdout}");
    assert!(
        stdout.contains("stdout: echo saw 2 bytes on demo.x"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_takes_settings_from_config_file_and_env_and_exits_0_on_sigterm() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "enrich",
        "enrich",
        "subjects = [\"orders.created\"]\npublish = [\"orders.enriched.>\"]",
    );
    // The file names a wrong URL; the env var (higher precedence) fixes it.
    let conf = dir.path().join("sluice.conf.toml");
    std::fs::write(
        &conf,
        format!(
            "nats_url = \"nats://127.0.0.1:{}\"\nplugins = \"{}\"\nmax_concurrency = 4\ntimeout = \"2s\"\n",
            free_port(),
            dir.path().display()
        ),
    )
    .unwrap();
    let mut cmd = sluice();
    cmd.args(["run", "--config"])
        .arg(&conf)
        .env("SLUICE_NATS_URL", nats.url());
    let host = Running::spawn(cmd);
    host.wait_for("sluice is serving", Duration::from_secs(60));

    let client = nats.client().await;
    let mut derived = client.subscribe("orders.enriched.>").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("orders.created", Bytes::from_static(br#"{"id":"cfg"}"#))
        .await
        .unwrap();
    let msg = next_message(
        &mut derived,
        Duration::from_secs(20),
        "event via the binary",
    )
    .await;
    assert_eq!(msg.subject.as_str(), "orders.enriched.created");
    assert!(host.terminate().success(), "exit status 0 after SIGTERM");
}

#[test]
fn run_keeps_retrying_an_unreachable_nats_and_says_so() {
    let dir = PluginDir::new();
    dir.add("echo", "echo", "subjects = [\"demo.>\"]");
    let url = format!("nats://127.0.0.1:{}", free_port());
    let mut cmd = sluice();
    cmd.args(["run", "--nats-url", &url, "--plugins"])
        .arg(dir.path());
    let host = Running::spawn(cmd);
    let line = host.wait_for("cannot reach NATS", Duration::from_secs(60));
    assert!(
        line.contains(&url) && line.contains("retrying in"),
        "{line}"
    );
    host.wait_for("attempt=2", Duration::from_secs(10));
    assert!(host.terminate().success());
}

#[test]
fn run_rejects_bad_configuration_naming_the_key() {
    let dir = PluginDir::new();
    let conf = dir.path().join("bad.toml");
    std::fs::write(
        &conf,
        "nats_url = \"nats://127.0.0.1:4222\"\nmax_concurency = 3\n",
    )
    .unwrap();
    let out = sluice()
        .args(["run", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("max_concurency") && stderr.contains("bad.toml"),
        "{stderr}"
    );

    let out = sluice()
        .args(["run", "--plugins"])
        .arg(dir.path())
        .env("SLUICE_TIMEOUT", "soon")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("SLUICE_TIMEOUT") || stderr.contains("--timeout"),
        "{stderr}"
    );
    assert!(stderr.contains("soon"), "{stderr}");

    let out = sluice()
        .args(["run", "--nats-url", "nats://host:port", "--plugins"])
        .arg(dir.path())
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("nats_url") && stderr.contains("nats://host:port"),
        "{stderr}"
    );

    let out = sluice()
        .args([
            "run",
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--plugins",
            "/nonexistent/plugins",
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("/nonexistent/plugins"), "{stderr}");
}
