//! Host configuration: a TOML file (`--config`), SLUICE_* environment
//! variables and flags, merged with precedence flag > env > file > default,
//! then validated into [`Settings`]. Flags and env arrive together as
//! [`Overrides`] (clap reads both); the file is [`FileConfig`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::delivery::RetryPolicy;
use crate::delivery::breaker::BreakerOverrides;
use crate::engine::EngineSettings;
use crate::manifest::RetryOverrides;

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
    /// Default per-plugin concurrency cap.
    pub max_concurrency: Option<u32>,
    /// Host-wide cap on live plugin instances.
    pub max_instances: Option<u32>,
    /// Default time limit per event.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Linear memory cap per instance, in MiB.
    pub max_memory_mb: Option<u32>,
    /// Dedup store: `kv` (NATS KV, shared by hosts) or `memory` (this host only).
    pub dedup_store: Option<String>,
    /// KV bucket for dedup records.
    pub dedup_bucket: Option<String>,
    /// How long completed keys are remembered.
    #[serde(default, with = "humantime_serde")]
    pub dedup_ttl: Option<Duration>,
    /// Name of the DLQ stream.
    pub dlq_stream: Option<String>,
    /// Compile cache folder, or `off`.
    pub compile_cache: Option<String>,
    /// Default retry policy.
    #[serde(default)]
    pub retry: RetryOverrides,
    /// Default circuit breaker policy.
    #[serde(default)]
    pub breaker: BreakerOverrides,
    /// Default core NATS buffer per plugin.
    pub core_buffer: Option<usize>,
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
    /// `--max-concurrency` / `SLUICE_MAX_CONCURRENCY`.
    pub max_concurrency: Option<u32>,
    /// `--max-instances` / `SLUICE_MAX_INSTANCES`.
    pub max_instances: Option<u32>,
    /// `--timeout` / `SLUICE_TIMEOUT`.
    pub timeout: Option<Duration>,
    /// `--max-memory-mb` / `SLUICE_MAX_MEMORY_MB`.
    pub max_memory_mb: Option<u32>,
    /// `--dedup-store` / `SLUICE_DEDUP_STORE`.
    pub dedup_store: Option<String>,
    /// `--dedup-bucket` / `SLUICE_DEDUP_BUCKET`.
    pub dedup_bucket: Option<String>,
    /// `--dedup-ttl` / `SLUICE_DEDUP_TTL`.
    pub dedup_ttl: Option<Duration>,
    /// `--dlq-stream` / `SLUICE_DLQ_STREAM`.
    pub dlq_stream: Option<String>,
    /// `--compile-cache` / `SLUICE_COMPILE_CACHE`.
    pub compile_cache: Option<String>,
}

/// Where dedup records live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupStoreKind {
    /// A NATS KV bucket shared by every host.
    Kv,
    /// This process only (single host, core NATS).
    Memory,
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
    /// Default per-plugin concurrency cap.
    pub max_concurrency: u32,
    /// Default per-event time limit.
    pub timeout: Duration,
    /// Default retry policy.
    pub retry: RetryPolicy,
    /// Engine sizing.
    pub engine: EngineSettings,
    /// Dedup store kind.
    pub dedup_store: DedupStoreKind,
    /// KV bucket name for dedup records.
    pub dedup_bucket: String,
    /// How long completed keys are remembered.
    pub dedup_ttl: Duration,
    /// DLQ stream name.
    pub dlq_stream: String,
    /// Compile cache folder (`None`: off).
    pub compile_cache: Option<PathBuf>,
    /// Default circuit breaker policy and behaviour.
    pub breaker: BreakerOverrides,
    /// Default core NATS buffer per plugin.
    pub core_buffer: usize,
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
    let max_concurrency = overrides
        .max_concurrency
        .or(file.max_concurrency)
        .unwrap_or(32);
    if max_concurrency == 0 {
        return Err(invalid("max_concurrency", "must be at least 1".into()));
    }
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
    let timeout = overrides
        .timeout
        .or(file.timeout)
        .unwrap_or(Duration::from_secs(5));
    if timeout.is_zero() {
        return Err(invalid(
            "timeout",
            "must be greater than zero, e.g. \"5s\"".into(),
        ));
    }
    let max_memory_mb = overrides.max_memory_mb.or(file.max_memory_mb).unwrap_or(64);
    if !(1..=4096).contains(&max_memory_mb) {
        return Err(invalid(
            "max_memory_mb",
            "must be between 1 and 4096".into(),
        ));
    }
    let retry = apply_retry(RetryPolicy::default(), &file.retry);
    if retry.max_attempts == 0 {
        return Err(invalid(
            "retry.max_attempts",
            "must be at least 1 (1 = no retries)".into(),
        ));
    }
    let dedup_store = match overrides
        .dedup_store
        .clone()
        .or(file.dedup_store)
        .as_deref()
        .unwrap_or("kv")
    {
        "kv" => DedupStoreKind::Kv,
        "memory" => DedupStoreKind::Memory,
        other => {
            return Err(invalid(
                "dedup_store",
                format!(
                    "`{other}` is not a dedup store; use `kv` (shared NATS KV bucket) or `memory` (this host only)"
                ),
            ));
        }
    };
    let dedup_bucket = overrides
        .dedup_bucket
        .clone()
        .or(file.dedup_bucket)
        .unwrap_or_else(|| "sluice-dedup".into());
    if !is_name(&dedup_bucket) {
        return Err(invalid(
            "dedup_bucket",
            format!("`{dedup_bucket}` is not a valid bucket name (letters, digits, `-`, `_`)"),
        ));
    }
    let dedup_ttl = overrides
        .dedup_ttl
        .or(file.dedup_ttl)
        .unwrap_or(Duration::from_secs(24 * 3600));
    if dedup_ttl < Duration::from_secs(1) {
        return Err(invalid(
            "dedup_ttl",
            "must be at least 1s, e.g. \"24h\"".into(),
        ));
    }
    let dlq_stream = overrides
        .dlq_stream
        .clone()
        .or(file.dlq_stream)
        .unwrap_or_else(|| crate::delivery::dead_letter::DEFAULT_DLQ_STREAM.into());
    if !is_name(&dlq_stream) {
        return Err(invalid(
            "dlq_stream",
            format!("`{dlq_stream}` is not a valid stream name (letters, digits, `-`, `_`)"),
        ));
    }
    let compile_cache = match overrides
        .compile_cache
        .clone()
        .or(file.compile_cache)
        .as_deref()
    {
        Some("off") => None,
        Some("") => {
            return Err(invalid(
                "compile_cache",
                "is empty; give a folder, or `off`".into(),
            ));
        }
        Some(dir) => Some(PathBuf::from(dir)),
        None => default_cache_dir(),
    };
    file.breaker
        .validate()
        .map_err(|(key, message)| invalid(key, message))?;
    let core_buffer = file.core_buffer.unwrap_or(10_000);
    if core_buffer == 0 {
        return Err(invalid("core_buffer", "must be at least 1".into()));
    }
    Ok(Settings {
        breaker: file.breaker,
        core_buffer,
        compile_cache,
        dedup_store,
        dedup_bucket,
        dedup_ttl,
        dlq_stream,
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
        max_concurrency,
        timeout,
        retry,
        engine: EngineSettings {
            max_instances,
            max_memory_bytes: (max_memory_mb as usize) << 20,
            ..EngineSettings::default()
        },
    })
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
    if let Some(v) = o.jitter {
        policy.jitter = v;
    }
    policy
}

/// `$XDG_CACHE_HOME/sluice/compiled`, else `$HOME/.cache/sluice/compiled`.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("sluice").join("compiled"))
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
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
        assert_eq!(s.max_concurrency, 4);
        assert_eq!(s.timeout, Duration::from_secs(2));
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
