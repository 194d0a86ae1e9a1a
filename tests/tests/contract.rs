//! Contract versions and the configuration capability end to end: a
//! `sluice:plugin@0.1.0` component works unchanged next to 0.2.0 ones,
//! `sluice check` names the version and capabilities, and `config.get`
//! reads manifest values under operator values and operator secrets, a
//! secret never showing in `config check` or the host's log.

use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use sluice_e2e::{
    NatsServer, PluginDir, Running, next_message, plugin_wasm, start_host, start_host_configured,
};

const WAIT: Duration = Duration::from_secs(20);

fn sluice() -> Command {
    sluice_e2e::sluice_command(env!("CARGO_BIN_EXE_sluice-e2e-host"))
}

fn stdout_of(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn check_reports_the_contract_version_and_capabilities() {
    let legacy = stdout_of(
        &sluice()
            .arg("check")
            .arg(plugin_wasm("legacy"))
            .output()
            .unwrap(),
    );
    assert!(legacy.contains("contract: sluice:plugin@0.1.0"), "{legacy}");
    assert!(
        legacy.contains("capabilities: logging, publish\n"),
        "{legacy}"
    );
    let settings = stdout_of(
        &sluice()
            .arg("check")
            .arg(plugin_wasm("settings"))
            .output()
            .unwrap(),
    );
    assert!(
        settings.contains("contract: sluice:plugin@0.2.0"),
        "{settings}"
    );
    assert!(
        settings.contains("capabilities: logging, publish, config\n"),
        "{settings}"
    );
    let noop = stdout_of(
        &sluice()
            .arg("check")
            .arg(plugin_wasm("noop"))
            .output()
            .unwrap(),
    );
    assert!(
        noop.contains("capabilities: none"),
        "a plugin asks only for what it calls: {noop}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_1_plugin_publishes_replies_and_fails_as_before_next_to_a_0_2_plugin() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "legacy",
        "legacy",
        "subjects = [\"legacy.in\"]\npublish = [\"legacy.out\"]",
    )
    .add(
        "settings",
        "settings",
        "subjects = [\"settings.in\"]\npublish = [\"settings.out\"]\n[config]\ngreeting = \"hi\"",
    );
    let host = start_host(&nats.url(), dir.path()).await;
    let client = nats.client().await;
    let mut out = client.subscribe("legacy.out").await.unwrap();
    let mut settings = client.subscribe("settings.out").await.unwrap();
    client.flush().await.unwrap();

    client
        .publish("legacy.in", Bytes::from_static(b"one"))
        .await
        .unwrap();
    let msg = next_message(&mut out, WAIT, "the 0.1.0 plugin's publish").await;
    assert_eq!(&msg.payload[..], b"legacy: one");
    let key = msg.headers.as_ref().and_then(|h| h.get("Legacy-Key"));
    assert!(key.is_some_and(|k| !k.as_str().is_empty()), "{msg:?}");

    let answer = client
        .request("legacy.in", Bytes::from_static(b"ping"))
        .await
        .unwrap();
    assert_eq!(&answer.payload[..], b"legacy: ping", "0.1.0 reply");

    client
        .publish("settings.in", Bytes::from_static(b"greeting"))
        .await
        .unwrap();
    let msg = next_message(&mut settings, WAIT, "the 0.2.0 plugin beside it").await;
    assert_eq!(&msg.payload[..], br#"{"greeting":"hi"}"#);

    // A permanent error from a 0.1.0 handler still gives up at once (one
    // attempt, no retry).
    client
        .publish("legacy.in", Bytes::from_static(b"bad"))
        .await
        .unwrap();
    let registry = host.registry();
    sluice_e2e::eventually(WAIT, "the 0.1.0 permanent failure is given up", || {
        registry.stats("legacy").is_some_and(|s| s.gave_up == 1)
    })
    .await;
    let stats = registry.stats("legacy").unwrap();
    assert_eq!((stats.failed_attempts, stats.retries), (1, 0), "{stats:?}");
}

const TOKEN: &str = "tok-7f3a9c-do-not-log";
const PASSWORD: &str = "pw-b81e-do-not-log";

/// A host config for `dir` giving the `settings` plugin an operator value
/// and two secrets (one from the environment, one from a file).
fn settings_config(nats_url: &str, dir: &PluginDir) -> std::path::PathBuf {
    let password = dir.path().join("db-password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let conf = dir.path().join("host.toml");
    std::fs::write(
        &conf,
        format!(
            r#"nats_url = "{nats_url}"
plugins = "{}"
log = "trace"

[plugin.settings]
plugin_config = {{ api_url = "http://operator.example" }}
plugin_secrets = {{ api_token = "env:SETTINGS_TEST_TOKEN", db_password = "file:{}" }}
"#,
            dir.path().display(),
            password.display()
        ),
    )
    .unwrap();
    conf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reads_secrets_over_operator_values_over_the_manifest_and_never_logs_a_secret() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "settings",
        "settings",
        "subjects = [\"settings.in\"]\npublish = [\"settings.out\"]\n[config]\ngreeting = \"hello\"\napi_url = \"http://manifest.example\"\napi_token = \"manifest-token\"\nretries = 3",
    );
    let conf = settings_config(&nats.url(), &dir);

    // `config check` shows where each secret comes from, never its value.
    let out = sluice()
        .args(["config", "check"])
        .arg(&conf)
        .env("SETTINGS_TEST_TOKEN", TOKEN)
        .output()
        .unwrap();
    let shown = stdout_of(&out);
    assert!(shown.contains("env:SETTINGS_TEST_TOKEN"), "{shown}");
    assert!(
        shown.contains("\"api_url=http://operator.example\""),
        "{shown}"
    );
    assert!(
        !shown.contains(TOKEN) && !shown.contains(PASSWORD),
        "{shown}"
    );

    let mut cmd = sluice();
    cmd.args(["run", "--config"])
        .arg(&conf)
        .env("SETTINGS_TEST_TOKEN", TOKEN);
    let mut host = Running::spawn(cmd);
    let mut seen = vec![host.wait_for("sluice is serving", Duration::from_secs(60))];

    let client = nats.client().await;
    let mut out = client.subscribe("settings.out").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish(
            "settings.in",
            Bytes::from_static(b"greeting,api_url,retries,api_token,db_password,missing"),
        )
        .await
        .unwrap();
    let msg = next_message(&mut out, WAIT, "the values the plugin read").await;
    let read: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(
        read,
        serde_json::json!({
            "greeting": "hello",                     // manifest only
            "api_url": "http://operator.example",    // operator beats manifest
            "retries": "3",                          // manifest number, read as text
            "api_token": TOKEN,                      // operator secret beats manifest
            "db_password": PASSWORD,                 // secret from a file, newline cut
            "missing": null,
        })
    );

    seen.push(host.wait_for("settings: read 6 keys", WAIT));
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(15)).success());
    seen.extend(host.drain_lines());
    let log = seen.join("\n");
    assert!(
        log.contains("sluice::plugin"),
        "trace logging was on: {log}"
    );
    assert!(
        !log.contains(TOKEN) && !log.contains(PASSWORD),
        "a secret reached the host's log:\n{log}"
    );
}

#[test]
fn a_secret_written_in_place_of_a_reference_is_refused_without_echoing_it() {
    let dir = PluginDir::new();
    let conf = dir.path().join("host.toml");
    std::fs::write(
        &conf,
        "[plugin.settings]\nplugin_secrets = { api_token = \"hunter2-literal\" }\n",
    )
    .unwrap();
    let out = sluice()
        .args(["config", "check"])
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("plugin.settings") && stderr.contains("api_token"),
        "{stderr}"
    );
    assert!(stderr.contains("env:"), "says what to write: {stderr}");
    assert!(!stderr.contains("hunter2-literal"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_wide_plugin_config_applies_to_plugins_without_their_own() {
    let nats = NatsServer::start();
    let dir = PluginDir::new();
    dir.add(
        "settings",
        "settings",
        "subjects = [\"settings.in\"]\npublish = [\"settings.out\"]\n[config]\nregion = \"manifest\"",
    );
    let _host = start_host_configured(
        &nats.url(),
        dir.path(),
        "plugin_config = { region = \"eu-west\", tier = \"gold\" }",
    )
    .await;
    let client = nats.client().await;
    let mut out = client.subscribe("settings.out").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("settings.in", Bytes::from_static(b"region,tier"))
        .await
        .unwrap();
    let msg = next_message(&mut out, WAIT, "host-wide values").await;
    let read: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(
        read,
        serde_json::json!({"region": "eu-west", "tier": "gold"})
    );
}
