//! Every declared setting, walked through the real binary (`sluice config
//! check`): given by flag, env var and file at once the flag wins; by env
//! and file the env wins; by the file alone the file; by none the default;
//! and a bad value given by each route is refused with an error naming the
//! setting. The list of cases must cover the declarations exactly, so a new
//! setting cannot be added without being walked here.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use sluice::config::Setting;

fn sluice() -> Command {
    sluice_e2e::sluice_command(env!("CARGO_BIN_EXE_sluice-e2e-host"))
}

/// How a value is written in the TOML file.
#[derive(Clone, Copy)]
enum Toml {
    /// A string.
    Text,
    /// A bare number.
    Number,
    /// An array of strings (the flag and env take a comma-separated list).
    List,
}

impl Toml {
    fn write(self, value: &str) -> String {
        match self {
            Toml::Text => format!("{value:?}"),
            Toml::Number => value.to_string(),
            Toml::List => format!("[{value:?}]"),
        }
    }
}

/// How one setting is walked.
struct Case {
    key: &'static str,
    toml: Toml,
    /// Valid values for the flag, the env var and the file, each shown
    /// verbatim by `config check` (secrets: masked).
    values: [String; 3],
    /// File lines the setting needs beside it (e.g. a user's password).
    needs: String,
    /// A bad value and a piece of the error it must cause; `None` when any
    /// value is valid (a log filter, a name, a secret).
    bad: Option<(String, &'static str)>,
}

fn case(
    key: &'static str,
    toml: Toml,
    values: [&str; 3],
    bad: Option<(&str, &'static str)>,
) -> Case {
    Case {
        key,
        toml,
        values: values.map(str::to_string),
        needs: String::new(),
        bad: bad.map(|(value, says)| (value.to_string(), says)),
    }
}

/// A file under `dir` holding `text`; its path.
fn file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn creds(dir: &Path, name: &str) -> String {
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    file(
        dir,
        name,
        &format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
}

fn cases(dir: &Path) -> Vec<Case> {
    use Toml::{List, Number, Text};
    let seed = |name| file(dir, name, &nkeys::KeyPair::new_user().seed().unwrap());
    let pem = |name| file(dir, name, "-----BEGIN CERTIFICATE-----\n");
    let range = Some(("0", "out of range"));
    let mut all = vec![
        case(
            "nats_url",
            Text,
            ["nats://flag:4222", "nats://env:4222", "nats://file:4222"],
            Some(("nats://host:port", "not a NATS address")),
        ),
        case(
            "nats_user",
            Text,
            ["flag-user", "env-user", "file-user"],
            None,
        ),
        case(
            "nats_password",
            Text,
            ["flag-pw", "env-pw", "file-pw"],
            None,
        ),
        case(
            "nats_token",
            Text,
            ["flag-token", "env-token", "file-token"],
            None,
        ),
        Case {
            values: [seed("flag.nk"), seed("env.nk"), seed("file.nk")],
            bad: Some((
                file(dir, "bad.nk", "not a seed"),
                "does not hold an NKey seed",
            )),
            ..case("nats_nkey_file", Text, ["", "", ""], None)
        },
        Case {
            values: [
                creds(dir, "flag.creds"),
                creds(dir, "env.creds"),
                creds(dir, "file.creds"),
            ],
            bad: Some((
                file(dir, "bad.creds", "not creds"),
                "not a NATS credentials file",
            )),
            ..case("nats_creds_file", Text, ["", "", ""], None)
        },
        Case {
            values: [pem("flag-ca.pem"), pem("env-ca.pem"), pem("file-ca.pem")],
            bad: Some(("/nonexistent/ca.pem".into(), "cannot read")),
            ..case("nats_tls_ca", Text, ["", "", ""], None)
        },
        Case {
            values: [
                pem("flag-cert.pem"),
                pem("env-cert.pem"),
                pem("file-cert.pem"),
            ],
            needs: format!("nats_tls_key = {:?}\n", pem("key.pem")),
            bad: Some(("/nonexistent/cert.pem".into(), "cannot read")),
            ..case("nats_tls_cert", Text, ["", "", ""], None)
        },
        Case {
            values: [pem("flag-key.pem"), pem("env-key.pem"), pem("file-key.pem")],
            needs: format!("nats_tls_cert = {:?}\n", pem("cert.pem")),
            bad: Some(("/nonexistent/key.pem".into(), "cannot read")),
            ..case("nats_tls_key", Text, ["", "", ""], None)
        },
        case(
            "nats_connect_timeout",
            Text,
            ["2s", "3s", "4s"],
            Some(("0s", "greater than zero")),
        ),
        case(
            "plugins",
            Text,
            ["flag-plugins", "env-plugins", "file-plugins"],
            None,
        ),
        case(
            "admin_addr",
            Text,
            ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"],
            Some(("everywhere", "not an address")),
        ),
        case(
            "log_format",
            Text,
            ["json", "pretty", "json"],
            Some(("xml", "not a log format")),
        ),
        case("log", Text, ["debug", "warn", "error"], None),
        case(
            "max_instances",
            Number,
            ["7", "8", "9"],
            Some(("0", "between 1 and 10000")),
        ),
        case(
            "background_cpu_share",
            Number,
            ["0.5", "0.25", "2.5"],
            range,
        ),
        case(
            "publish_allow",
            List,
            ["flag.>", "env.>", "file.>"],
            Some(("a..b", "a..b")),
        ),
        case(
            "request_allow",
            List,
            ["flag.>", "env.>", "file.>"],
            Some(("a..b", "a..b")),
        ),
        case(
            "http_allow",
            List,
            [
                "https://flag.example.com",
                "https://*.env.example.com",
                "http://127.0.0.1:8080",
            ],
            Some(("ftp://x", "not an HTTP origin")),
        ),
        case(
            "http_allow_private",
            Text,
            ["true", "false", "true"],
            Some(("maybe", "not true or false")),
        ),
        case(
            "plugin_config",
            List,
            ["k=flag", "k=env", "k=file"],
            Some(("k y=v", "not a valid config key")),
        ),
        case(
            "plugin_secrets",
            List,
            ["k=env:FLAG", "k=env:ENV", "k=file:/run/file"],
            Some(("k=hunter2", "not a reference")),
        ),
        case(
            "state_bucket",
            Text,
            ["flag-s", "env-s", "file-s"],
            Some(("a b", "not a valid bucket name")),
        ),
        case(
            "dedup_store",
            Text,
            ["memory", "kv", "memory"],
            Some(("disk", "not a dedup store")),
        ),
        case(
            "dedup_bucket",
            Text,
            ["flag-b", "env-b", "file-b"],
            Some(("a b", "not a valid bucket name")),
        ),
        case(
            "dedup_ttl",
            Text,
            ["2h", "3h", "4h"],
            Some(("0s", "at least 1s")),
        ),
        case(
            "dlq_stream",
            Text,
            ["FLAG_DLQ", "ENV_DLQ", "FILE_DLQ"],
            Some(("a.b", "not a valid stream name")),
        ),
        case(
            "shutdown_grace",
            Text,
            ["3s", "4s", "6s"],
            Some(("soon", "soon")),
        ),
        case(
            "compile_cache",
            Text,
            ["/tmp/flag-cache", "/tmp/env-cache", "/tmp/file-cache"],
            Some(("", "is empty")),
        ),
        case(
            "core_buffer",
            Number,
            ["5", "6", "7"],
            Some(("0", "at least 1")),
        ),
        case(
            "replicas",
            Number,
            ["2", "3", "4"],
            Some(("6", "between 1 and 5")),
        ),
        case(
            "timeout",
            Text,
            ["2s", "3s", "4s"],
            Some(("2h", "out of range")),
        ),
        case("max_concurrency", Number, ["5", "6", "7"], range),
        case(
            "max_memory_mb",
            Number,
            ["65", "66", "67"],
            Some(("5000", "out of range")),
        ),
        case(
            "max_table_elements",
            Number,
            ["30000", "30001", "30002"],
            range,
        ),
        case("max_core_instances", Number, ["5", "6", "7"], range),
        case(
            "max_payload",
            Text,
            ["1MiB", "2MiB", "3MiB"],
            Some(("2GiB", "out of range")),
        ),
        case(
            "max_publishes",
            Number,
            ["5", "6", "7"],
            Some(("2000000", "out of range")),
        ),
        case(
            "max_publish_bytes",
            Text,
            ["1MiB", "2MiB", "3MiB"],
            Some(("2GiB", "out of range")),
        ),
        case(
            "max_log_lines",
            Number,
            ["5", "6", "7"],
            Some(("2000000", "out of range")),
        ),
        case(
            "max_log_rate",
            Number,
            ["5", "6", "7"],
            Some(("2000000", "out of range")),
        ),
        case(
            "max_http_requests",
            Number,
            ["5", "6", "7"],
            Some(("20000", "out of range")),
        ),
        case(
            "max_http_response",
            Text,
            ["1MiB", "2MiB", "3MiB"],
            Some(("2GiB", "out of range")),
        ),
    ];
    for c in &mut all {
        c.needs.push_str(match c.key {
            "nats_user" => "nats_password = \"pw\"\n",
            "nats_password" => "nats_user = \"app\"\n",
            _ => "",
        });
    }
    all
}

/// Which routes give the setting a value in one run.
#[derive(Clone, Copy, Debug)]
struct Given {
    flag: Option<usize>,
    env: Option<usize>,
    file: Option<usize>,
}

/// Run `config check` for `c` with the values picked by `given` (an index
/// into `c.values`, or `bad` for index 3); (success, stdout, stderr).
fn check(dir: &Path, s: &Setting, c: &Case, given: Given) -> (bool, String, String) {
    let value = |i: usize| match (i, &c.bad) {
        (3, Some((bad, _))) => bad.clone(),
        _ => c.values[i].clone(),
    };
    let mut text = String::new();
    if given.flag.is_some() || given.env.is_some() || given.file.is_some() {
        text.push_str(&c.needs);
    }
    if let Some(i) = given.file {
        text.push_str(&format!("{} = {}\n", c.key, c.toml.write(&value(i))));
    }
    let conf = dir.join(format!("{}.toml", c.key));
    std::fs::write(&conf, text).unwrap();
    let mut cmd = sluice();
    cmd.args(["config", "check"]).arg(&conf);
    if let Some(i) = given.flag {
        cmd.arg(format!("--{}={}", s.flag, value(i)));
    }
    if let Some(i) = given.env {
        cmd.env(&s.env, value(i));
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The line `config check` printed for `key`.
fn line<'a>(stdout: &'a str, key: &str) -> &'a str {
    let start = format!("{key} = ");
    stdout
        .lines()
        .find(|l| l.starts_with(&start))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{stdout}"))
}

#[test]
fn every_setting_takes_flag_over_env_over_file_over_default_and_names_itself_when_bad() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases(dir.path());
    let declared: BTreeSet<&str> = sluice::config::flags::all().map(|s| s.key).collect();
    let walked: BTreeSet<&str> = cases.iter().map(|c| c.key).collect();
    assert_eq!(
        declared, walked,
        "every declared setting needs a case here (and only those)"
    );
    let docs = sluice().args(["config", "docs"]).output().unwrap();
    let docs = String::from_utf8_lossy(&docs.stdout);
    for s in sluice::config::flags::all() {
        assert!(
            docs.contains(&format!("| `{}` | `--{} ", s.key, s.flag)),
            "`sluice config docs` lists {}:\n{docs}",
            s.key
        );
    }
    for s in sluice::config::flags::all() {
        let c = cases.iter().find(|c| c.key == s.key).unwrap();
        let shown = |i: usize| {
            if s.secret {
                sluice::config::MASK.to_string()
            } else {
                c.values[i].clone()
            }
        };
        for (given, winner, origin) in [
            (
                Given {
                    flag: Some(0),
                    env: Some(1),
                    file: Some(2),
                },
                0,
                "flag",
            ),
            (
                Given {
                    flag: None,
                    env: Some(1),
                    file: Some(2),
                },
                1,
                "env",
            ),
            (
                Given {
                    flag: None,
                    env: None,
                    file: Some(2),
                },
                2,
                "file",
            ),
        ] {
            let (ok, stdout, stderr) = check(dir.path(), s, c, given);
            assert!(ok, "{} {given:?}: {stderr}", s.key);
            let line = line(&stdout, s.key);
            assert!(
                line.contains(&shown(winner)) && line.ends_with(&format!("# {origin}")),
                "{} {given:?}: the {origin} value `{}` wins: {line}",
                s.key,
                shown(winner)
            );
        }
        let none = Given {
            flag: None,
            env: None,
            file: None,
        };
        let (ok, stdout, stderr) = check(dir.path(), s, c, none);
        assert!(ok, "{}: {stderr}", s.key);
        if let Some(default) = &s.default {
            let line = line(&stdout, s.key);
            assert!(
                line.contains(default.as_str()) && line.ends_with("# default"),
                "{}: the default `{default}`: {line}",
                s.key
            );
        }
        let Some((bad, says)) = &c.bad else { continue };
        for given in [
            Given {
                flag: Some(3),
                env: None,
                file: None,
            },
            Given {
                flag: None,
                env: Some(3),
                file: None,
            },
            Given {
                flag: None,
                env: None,
                file: Some(3),
            },
        ] {
            let (ok, _, stderr) = check(dir.path(), s, c, given);
            assert!(!ok, "{} {given:?}: `{bad}` is accepted", s.key);
            let named = stderr.contains(s.key) || stderr.contains(&format!("--{}", s.flag));
            assert!(
                named && stderr.contains(says),
                "{} {given:?}: the error for `{bad}` names the setting and says `{says}`: {stderr}",
                s.key
            );
        }
    }
}

/// Every key a `[plugin.<name>]` table takes (each per-plugin limit, each
/// per-plugin setting) comes from the same declaration: it shows in that
/// plugin's table, and a bad value there is refused naming the plugin and key.
#[test]
fn every_per_plugin_key_is_taken_by_a_plugin_table_and_checked_there() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases(dir.path());
    let per_plugin: Vec<&Setting> = sluice::config::flags::all()
        .filter(|s| s.kind == sluice::config::Kind::Limit || s.has("per_plugin"))
        .collect();
    assert!(per_plugin.iter().any(|s| s.key == "publish_allow"));
    for s in per_plugin {
        let c = cases.iter().find(|c| c.key == s.key).unwrap();
        let conf = dir.path().join("plugin.toml");
        let run = |value: &str| {
            std::fs::write(
                &conf,
                format!("[plugin.billing]\n{} = {}\n", s.key, c.toml.write(value)),
            )
            .unwrap();
            let out = sluice()
                .args(["config", "check"])
                .arg(&conf)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (ok, stdout, stderr) = run(&c.values[2]);
        assert!(ok, "{}: {stderr}", s.key);
        let table = stdout
            .split("[plugin.billing]")
            .nth(1)
            .unwrap_or_else(|| panic!("{}: no [plugin.billing] in:\n{stdout}", s.key));
        let table = table.split("\n[").next().unwrap_or_default();
        assert!(
            line(table, s.key).contains(&c.values[2]),
            "{}: {table}",
            s.key
        );
        let (bad, says) = c
            .bad
            .as_ref()
            .expect("every per-plugin key has a bad value");
        let (ok, _, stderr) = run(bad);
        assert!(!ok, "{}: `{bad}` accepted in [plugin.billing]", s.key);
        assert!(
            stderr.contains("plugin.billing") && stderr.contains(s.key) && stderr.contains(says),
            "{}: {stderr}",
            s.key
        );
    }
}
