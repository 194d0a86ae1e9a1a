use std::time::Duration;

use super::*;

#[test]
fn flag_or_env_beats_file_beats_default() {
    let file: FileConfig =
        toml::from_str("nats_url = \"nats://file:4222\"\nmax_concurrency = 4\ntimeout = \"2s\"")
            .unwrap();
    let overrides = Overrides {
        nats_url: Some("nats://flag:4222".into()),
        ..Overrides::default()
    };
    let s = resolve(&overrides, file).unwrap();
    assert_eq!(s.nats.urls, vec!["nats://flag:4222"]);
    assert_eq!(s.sandbox.defaults.max_concurrency, 4);
    assert_eq!(s.sandbox.defaults.timeout, Duration::from_secs(2));
    assert_eq!(s.log, "info");
    assert_eq!(s.plugins, PathBuf::from("plugins"));
}

#[test]
fn errors_name_the_key() {
    let e = toml::from_str::<FileConfig>("nats_ur = \"x\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nats_ur"), "{e}");
    let e = toml::from_str::<FileConfig>("timeout = \"later\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("timeout"), "{e}");
    let bad_url = Overrides {
        nats_url: Some("nats://host:notaport".into()),
        ..Overrides::default()
    };
    let e = resolve(&bad_url, FileConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nats_url") && e.contains("notaport"), "{e}");
    let bad_format = Overrides {
        log_format: Some("xml".into()),
        ..Overrides::default()
    };
    let e = resolve(&bad_format, FileConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("log_format"), "{e}");
}

fn file(text: &str) -> FileConfig {
    toml::from_str(text).unwrap()
}

fn error(overrides: &Overrides, file: FileConfig) -> String {
    resolve(overrides, file).unwrap_err().to_string()
}

#[test]
fn every_service_key_has_precedence_flag_env_over_file_over_default() {
    let defaults = resolve(&Overrides::default(), FileConfig::default()).unwrap();
    assert_eq!(
        defaults.admin_addr, None,
        "the admin endpoint is off by default"
    );
    assert_eq!(defaults.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(defaults.nats.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(defaults.nats.auth, NatsAuth::None);

    let from_file = file(
        "admin_addr = \"127.0.0.1:9000\"\nshutdown_grace = \"3s\"\nnats_connect_timeout = \"2s\"\n\
         nats_user = \"file-user\"\nnats_password = \"file-pass\"",
    );
    let s = resolve(&Overrides::default(), from_file).unwrap();
    assert_eq!(s.admin_addr, Some("127.0.0.1:9000".parse().unwrap()));
    assert_eq!(s.shutdown_grace, Duration::from_secs(3));
    assert_eq!(s.nats.connect_timeout, Duration::from_secs(2));

    let flags = Overrides {
        admin_addr: Some("off".into()),
        shutdown_grace: Some(Duration::from_millis(500)),
        nats_user: Some("flag-user".into()),
        nats_password: Some(Secret::new("flag-pass")),
        ..Overrides::default()
    };
    let s = resolve(
        &flags,
        file("admin_addr = \"127.0.0.1:9000\"\nshutdown_grace = \"3s\""),
    )
    .unwrap();
    assert_eq!(
        s.admin_addr, None,
        "`off` given by flag/env wins over the file"
    );
    assert_eq!(s.shutdown_grace, Duration::from_millis(500));
    assert_eq!(
        s.nats.auth,
        NatsAuth::UserPassword {
            user: "flag-user".into(),
            password: Secret::new("flag-pass")
        }
    );
    assert_eq!(
        resolve(
            &Overrides {
                admin_addr: Some("localhost:9464".into()),
                ..Overrides::default()
            },
            FileConfig::default()
        )
        .unwrap()
        .admin_addr,
        Some("127.0.0.1:9464".parse().unwrap())
    );
}

#[test]
fn bad_service_values_are_errors_naming_the_key() {
    let e = toml::from_str::<FileConfig>("shutdown_grace = \"a while\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("shutdown_grace"), "{e}");
    let e = toml::from_str::<FileConfig>("nats_connect_timeout = 5")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nats_connect_timeout"), "{e}");
    let e = error(&Overrides::default(), file("admin_addr = \"0.0.0.0:http\""));
    assert!(
        e.contains("admin_addr") && e.contains("0.0.0.0:http"),
        "{e}"
    );
    let e = error(
        &Overrides {
            nats_token: Some(Secret::new("t")),
            ..Overrides::default()
        },
        file("nats_user = \"u\"\nnats_password = \"p\""),
    );
    assert!(e.contains("nats_token") && e.contains("nats_user"), "{e}");
    let e = error(&Overrides::default(), file("nats_user = \"u\""));
    assert!(e.contains("nats_password"), "{e}");
    let e = error(
        &Overrides::default(),
        file("nats_creds_file = \"/nonexistent/app.creds\""),
    );
    assert!(
        e.contains("nats_creds_file") && e.contains("/nonexistent/app.creds"),
        "{e}"
    );
    let e = error(
        &Overrides::default(),
        file("nats_tls_cert = \"/nonexistent/client.pem\""),
    );
    assert!(e.contains("nats_tls_cert"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("client.pem");
    std::fs::write(&cert, "x").unwrap();
    let e = error(
        &Overrides {
            nats_tls_cert: Some(cert),
            ..Overrides::default()
        },
        FileConfig::default(),
    );
    assert!(e.contains("nats_tls_key"), "{e}");
    let seed = dir.path().join("user.nk");
    std::fs::write(&seed, "not a seed").unwrap();
    let e = error(
        &Overrides {
            nats_nkey_file: Some(seed.clone()),
            ..Overrides::default()
        },
        FileConfig::default(),
    );
    assert!(e.contains("nats_nkey_file") && e.contains("user.nk"), "{e}");
    std::fs::write(&seed, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let s = resolve(
        &Overrides {
            nats_nkey_file: Some(seed),
            ..Overrides::default()
        },
        FileConfig::default(),
    )
    .unwrap();
    assert!(matches!(s.nats.auth, NatsAuth::NKey { .. }));
    assert!(
        !format!("{s:?}").contains("SU"),
        "Debug never shows the seed"
    );
}

#[test]
fn a_creds_file_is_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("app.creds");
    let with = |path: &Path| Overrides {
        nats_creds_file: Some(path.to_path_buf()),
        ..Overrides::default()
    };
    std::fs::write(&creds, "not a creds file").unwrap();
    let e = error(&with(&creds), FileConfig::default());
    assert!(
        e.contains("nats_creds_file") && e.contains("app.creds"),
        "{e}"
    );
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
    let s = resolve(&with(&creds), FileConfig::default()).unwrap();
    assert_eq!(s.nats.auth, NatsAuth::Creds(creds.clone()));
    assert!(!render(&s).contains(&seed), "the seed is never shown");
}

#[test]
fn render_masks_secrets_and_is_a_valid_config_file() {
    let o = Overrides {
        nats_url: Some("nats://app:hunter2@127.0.0.1:4222".into()),
        nats_token: None,
        admin_addr: Some("127.0.0.1:9464".into()),
        ..Overrides::default()
    };
    let s = resolve(
        &o,
        file(
            "shutdown_grace = \"30s\"\nmax_payload = \"1MiB\"\npublish_allow = [\"a.>\"]\n[retry]\nmax_attempts = 3\n[plugin.big]\nmax_memory_mb = 128\npublish_allow = [\"b.>\"]",
        ),
    )
    .unwrap();
    let text = render(&s);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains(MASK), "{text}");
    assert!(text.contains("shutdown_grace = \"30s\""), "{text}");
    assert!(text.contains("max_attempts = 3"), "{text}");
    assert!(text.contains("max_payload = \"1MiB\""), "{text}");
    assert!(text.contains("[plugin.big]"), "{text}");
    let again = resolve(&Overrides::default(), toml::from_str(&text).unwrap()).unwrap();
    assert_eq!(
        render(&again),
        text,
        "the output reads back as the same config"
    );

    let with_password = resolve(
        &Overrides {
            nats_user: Some("app".into()),
            nats_password: Some(Secret::new("s3cret-pw")),
            ..Overrides::default()
        },
        FileConfig::default(),
    )
    .unwrap();
    let text = render(&with_password);
    assert!(
        !text.contains("s3cret-pw") && text.contains("nats_user = \"app\""),
        "{text}"
    );
    assert!(!format!("{with_password:?}").contains("s3cret-pw"));
}

#[test]
fn urls_are_shown_without_passwords() {
    assert_eq!(
        redact_url("nats://app:hunter2@h:4222"),
        format!("nats://app:{MASK}@h:4222")
    );
    assert_eq!(
        redact_url("tls://tok@h:4222"),
        format!("tls://{MASK}@h:4222")
    );
    assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
}

#[test]
fn limits_layer_and_plugin_rules_size_the_engine() {
    let file: FileConfig = toml::from_str(
        r#"
        max_memory_mb = 32
        max_payload = "1MiB"
        publish_allow = ["events.>"]
        [plugin.big]
        max_memory_mb = 256
        publish_allow = ["orders.>"]
        "#,
    )
    .unwrap();
    let overrides = Overrides {
        limits: LimitOverrides {
            max_payload: Some(crate::limits::ByteSize(2 << 20)),
            ..LimitOverrides::default()
        },
        ..Overrides::default()
    };
    let s = resolve(&overrides, file).unwrap();
    assert_eq!(s.sandbox.defaults.max_memory_mb, 32);
    assert_eq!(s.sandbox.defaults.max_payload.bytes(), 2 << 20, "flag wins");
    assert_eq!(s.sandbox.ceiling("big").max_memory_mb, 256);
    assert_eq!(s.engine.max_memory_bytes, 256 << 20, "pool fits `big`");
    assert_eq!(s.sandbox.publish_allow, Some(vec!["events.>".to_string()]));
    assert_eq!(s.engine.background_cpu_share, 0.1, "default");
    let e = resolve(
        &Overrides {
            background_cpu_share: Some(0.0),
            ..Overrides::default()
        },
        FileConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("background_cpu_share"), "{e}");

    let e = resolve(
        &Overrides::default(),
        toml::from_str("[plugin.x]\nmax_memory_mb = 0").unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("plugin.x") && e.contains("max_memory_mb"), "{e}");
    let e = toml::from_str::<FileConfig>("[plugin.x]\npublish = [\"a\"]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("publish"), "unknown rule keys are named: {e}");
    let e = resolve(
        &Overrides::default(),
        toml::from_str("publish_allow = [\"a..b\"]").unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("publish_allow"), "{e}");
}

#[test]
fn url_lists_are_split() {
    let o = Overrides {
        nats_url: Some("nats://a:4222, nats://b:4222".into()),
        ..Overrides::default()
    };
    assert_eq!(
        resolve(&o, FileConfig::default()).unwrap().nats.urls.len(),
        2
    );
}

#[test]
fn replicas_default_to_one_and_are_checked_against_jetstream_limits() {
    let s = resolve(&Overrides::default(), FileConfig::default()).unwrap();
    assert_eq!(s.values.replicas, 1);
    let file: FileConfig = toml::from_str("replicas = 3").unwrap();
    assert_eq!(
        resolve(&Overrides::default(), file)
            .unwrap()
            .values
            .replicas,
        3
    );
    for bad in ["replicas = 0", "replicas = 6"] {
        let file: FileConfig = toml::from_str(bad).unwrap();
        let e = resolve(&Overrides::default(), file)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("replicas") && e.contains("between 1 and 5"),
            "{e}"
        );
    }
}
