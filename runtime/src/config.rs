//! Host configuration: a TOML file (`--config`), SLUICE_* environment
//! variables and flags, merged with precedence flag > env > file > default,
//! then validated into [`Settings`]. Flags and env arrive together as
//! [`Overrides`] (clap reads both); the file is [`FileConfig`].
//!
//! The per-plugin limit keys (`timeout`, `max_memory_mb`, `max_payload`, ...)
//! set host-wide defaults that are also every plugin's ceiling; the file's
//! `[plugin.<name>]` tables set one plugin's ceiling and publish allow-list
//! (see [`crate::limits`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::delivery::RetryPolicy;
use crate::engine::EngineSettings;
use crate::limits::{LimitOverrides, Limits, PluginRules, SandboxPolicy, with_limit_keys};
use crate::manifest::RetryOverrides;

with_limit_keys! {
    /// The config file as written (unknown keys are errors).
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FileConfig {
        /// NATS server URL(s), comma-separated.
        pub nats_url: Option<String>,
        /// The plugin folder.
        pub plugins: Option<PathBuf>,
        /// `pretty` or `json`.
        pub log_format: Option<String>,
        /// Log filter, RUST_LOG syntax.
        pub log: Option<String>,
        /// Host-wide cap on live plugin instances.
        pub max_instances: Option<u32>,
        /// Cores' worth of CPU long-running invocations get while short events flow.
        pub background_cpu_share: Option<f64>,
        /// Subject patterns any plugin may publish to, whatever its manifest grants.
        pub publish_allow: Option<Vec<String>>,
        /// The operator's rules per plugin name: `[plugin.<name>]`.
        #[serde(default)]
        pub plugin: BTreeMap<String, PluginRules>,
        /// Default retry policy.
        #[serde(default)]
        pub retry: RetryOverrides,
    }
}

/// Values given by flag or SLUICE_* env var (clap resolves those two).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--nats-url` / `SLUICE_NATS_URL`.
    pub nats_url: Option<String>,
    /// `--plugins` / `SLUICE_PLUGINS`.
    pub plugins: Option<PathBuf>,
    /// `--log-format` / `SLUICE_LOG_FORMAT`.
    pub log_format: Option<String>,
    /// `--log` / `SLUICE_LOG`.
    pub log: Option<String>,
    /// `--max-instances` / `SLUICE_MAX_INSTANCES`.
    pub max_instances: Option<u32>,
    /// `--background-cpu-share` / `SLUICE_BACKGROUND_CPU_SHARE`.
    pub background_cpu_share: Option<f64>,
    /// `--publish-allow` / `SLUICE_PUBLISH_ALLOW`.
    pub publish_allow: Option<Vec<String>>,
    /// The limit flags (`--timeout`, `--max-memory-mb`, ...) and their env vars.
    pub limits: LimitOverrides,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Validated host settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS server URLs.
    pub nats_urls: Vec<String>,
    /// The plugin folder.
    pub plugins: PathBuf,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log: String,
    /// Limits, allow-lists and per-plugin rules.
    pub sandbox: SandboxPolicy,
    /// Default retry policy.
    pub retry: RetryPolicy,
    /// Engine sizing.
    pub engine: EngineSettings,
}

/// A configuration problem; names the file or key and what to do.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config file {}: cannot be read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped key.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is invalid.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The key (as in the file; the flag and env var are derived from it).
        key: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

impl FileConfig {
    /// Read the config file at `path`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }
}

/// Merge overrides (flag/env) over the file over defaults, and validate.
pub fn resolve(overrides: &Overrides, file: FileConfig) -> Result<Settings, ConfigError> {
    let invalid = |key, message: String| ConfigError::Invalid { key, message };
    let sandbox = sandbox_policy(overrides, &file)?;
    let nats_url = overrides
        .nats_url
        .clone()
        .or(file.nats_url)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_string());
    let nats_urls: Vec<String> = nats_url
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if nats_urls.is_empty() {
        return Err(invalid(
            "nats_url",
            "is empty; e.g. nats://127.0.0.1:4222".into(),
        ));
    }
    for url in &nats_urls {
        validate_nats_url(url).map_err(|m| invalid("nats_url", m))?;
    }
    let log_format = match overrides
        .log_format
        .clone()
        .or(file.log_format)
        .unwrap_or_else(|| "pretty".into())
        .as_str()
    {
        "pretty" => LogFormat::Pretty,
        "json" => LogFormat::Json,
        other => {
            return Err(invalid(
                "log_format",
                format!("`{other}` is not a log format; use `pretty` or `json`"),
            ));
        }
    };
    let max_instances = overrides
        .max_instances
        .or(file.max_instances)
        .unwrap_or(256);
    if !(1..=10_000).contains(&max_instances) {
        return Err(invalid(
            "max_instances",
            "must be between 1 and 10000".into(),
        ));
    }
    let background_cpu_share = overrides
        .background_cpu_share
        .or(file.background_cpu_share)
        .unwrap_or(crate::engine::governor::DEFAULT_BACKGROUND_SHARE);
    if !(0.01..=1024.0).contains(&background_cpu_share) {
        return Err(invalid(
            "background_cpu_share",
            format!(
                "{background_cpu_share} is out of range; use a number of cores from 0.01 to 1024 (e.g. 0.1)"
            ),
        ));
    }
    let retry = apply_retry(RetryPolicy::default(), &file.retry);
    if retry.max_attempts == 0 {
        return Err(invalid(
            "retry.max_attempts",
            "must be at least 1 (1 = no retries)".into(),
        ));
    }
    Ok(Settings {
        nats_urls,
        plugins: overrides
            .plugins
            .clone()
            .or(file.plugins)
            .unwrap_or_else(|| PathBuf::from("plugins")),
        log_format,
        log: overrides
            .log
            .clone()
            .or(file.log)
            .unwrap_or_else(|| "info".into()),
        engine: EngineSettings {
            background_cpu_share,
            ..engine_settings(max_instances, &sandbox.largest())
        },
        sandbox,
        retry,
    })
}

/// Host limits (defaults < file < flag/env), allow-list and per-plugin rules.
fn sandbox_policy(overrides: &Overrides, file: &FileConfig) -> Result<SandboxPolicy, ConfigError> {
    let from_file = file.limit_overrides();
    for layer in [&from_file, &overrides.limits] {
        layer.validate().map_err(|e| ConfigError::Invalid {
            key: e.key,
            message: e.message,
        })?;
    }
    let policy = SandboxPolicy {
        defaults: Limits::default()
            .overlay(&from_file)
            .overlay(&overrides.limits),
        publish_allow: overrides
            .publish_allow
            .clone()
            .or_else(|| file.publish_allow.clone()),
        rules: file.plugin.clone(),
    };
    policy.validate().map_err(|e| ConfigError::Invalid {
        key: e.key,
        message: e.message,
    })?;
    Ok(policy)
}

/// The engine sized so every plugin fits within its largest allowed limits.
fn engine_settings(max_instances: u32, largest: &Limits) -> EngineSettings {
    EngineSettings {
        max_instances,
        max_memory_bytes: largest.max_memory_bytes(),
        max_table_elements: largest.max_table_elements as usize,
        max_core_instances: largest.max_core_instances,
        ..EngineSettings::default()
    }
}

/// Apply per-plugin or file overrides to a retry policy.
pub fn apply_retry(mut policy: RetryPolicy, o: &RetryOverrides) -> RetryPolicy {
    if let Some(v) = o.max_attempts {
        policy.max_attempts = v;
    }
    if let Some(v) = o.initial_delay {
        policy.initial_delay = v;
    }
    if let Some(v) = o.multiplier {
        policy.multiplier = v;
    }
    if let Some(v) = o.max_delay {
        policy.max_delay = v;
    }
    if let Some(v) = o.max_elapsed {
        policy.max_elapsed = Some(v);
    }
    policy
}

fn validate_nats_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .or_else(|| url.strip_prefix("ws://"))
        .or_else(|| url.strip_prefix("wss://"))
        .unwrap_or(url);
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    let ok = !host_port.is_empty()
        && !host_port.contains(char::is_whitespace)
        && host_port
            .rsplit_once(':')
            .map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            .unwrap_or(true);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{url}` is not a NATS address; use e.g. nats://host:4222"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn flag_or_env_beats_file_beats_default() {
        let file: FileConfig = toml::from_str(
            "nats_url = \"nats://file:4222\"\nmax_concurrency = 4\ntimeout = \"2s\"",
        )
        .unwrap();
        let overrides = Overrides {
            nats_url: Some("nats://flag:4222".into()),
            ..Overrides::default()
        };
        let s = resolve(&overrides, file).unwrap();
        assert_eq!(s.nats_urls, vec!["nats://flag:4222"]);
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
            resolve(&o, FileConfig::default()).unwrap().nats_urls.len(),
            2
        );
    }
}
