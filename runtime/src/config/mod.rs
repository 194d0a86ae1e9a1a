//! Host configuration: a TOML file (`--config`), SLUICE_* environment
//! variables and flags, merged with precedence flag > env > file > default,
//! then validated into [`Settings`]. Flags and env arrive together as
//! [`Overrides`] (clap reads both); the file is [`FileConfig`].
//!
//! Every setting is declared once, in [`table`] (host settings) or in
//! [`crate::limits`] (per-plugin limits); the flag, the variable, the file
//! key, the check, the merge, `config check` and the docs' settings table
//! are all generated from that declaration ([`declare`], [`flags`],
//! [`render`], [`docs`]). So a bad value stops the host at start with the
//! key named, and `sluice config check` shows exactly what a running host
//! would use. Secrets are held in [`Secret`], whose `Debug` never prints
//! them, and [`render`] masks them.
//!
//! This module only describes and merges settings: what the NATS settings
//! mean for the connection (one authentication method, readable files) is
//! checked in [`crate::nats::auth`].

pub mod check;
mod declare;
pub mod docs;
pub mod flags;
mod render;
mod setting;
pub mod table;
pub mod value;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::delivery::RetryPolicy;
use crate::delivery::breaker::BreakerOverrides;
use crate::engine::EngineSettings;
use crate::limits::{LimitOverrides, Limits, SandboxPolicy};
use crate::manifest::RetryOverrides;

pub use crate::nats::{DEFAULT_CONNECT_TIMEOUT, NatsAuth, NatsSettings, NatsTls, redact_url};
pub use render::{render, render_with_origins};
pub use setting::{Kind, Origin, Origins, Setting};
pub use table::{FileConfig, Overrides, PluginRules, Values};
pub use value::{MASK, Secret};

/// Default time in-flight events get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where dedup records live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupStoreKind {
    /// A NATS KV bucket shared by every host.
    Kv,
    /// This process only (single host, core NATS).
    Memory,
}

impl value::Show for DedupStoreKind {
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::String(
            match self {
                DedupStoreKind::Kv => "kv",
                DedupStoreKind::Memory => "memory",
            }
            .into(),
        ))
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl value::Show for LogFormat {
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::String(
            match self {
                LogFormat::Pretty => "pretty",
                LogFormat::Json => "json",
            }
            .into(),
        ))
    }
}

/// Validated host settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS connection.
    pub nats: NatsSettings,
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
    /// Where the admin HTTP endpoint listens (`None`: off).
    pub admin_addr: Option<SocketAddr>,
    /// How long in-flight events may finish at shutdown.
    pub shutdown_grace: Duration,
    /// Every declared host setting as resolved (the fields above are built
    /// from it); a new setting is read here, as `values.<key>`.
    pub values: Values,
    /// Where each setting's value came from (flag, env, file, default).
    pub origins: Origins,
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
    let mut origins = Origins::default();
    let values = Values::merge(overrides, &file, &mut origins)?;
    let sandbox = sandbox_policy(overrides, &file, &values, &mut origins)?;
    let nats = NatsSettings::from_values(&values).map_err(|e| invalid(e.key, e.message))?;
    let retry = apply_retry(RetryPolicy::default(), &file.retry);
    if retry.max_attempts == 0 {
        return Err(invalid(
            "retry.max_attempts",
            "must be at least 1 (1 = no retries)".into(),
        ));
    }
    file.breaker
        .validate()
        .map_err(|(key, message)| invalid(key, message))?;
    let v = &values;
    Ok(Settings {
        nats,
        plugins: v.plugins.clone(),
        log_format: v.log_format,
        log: v.log.clone(),
        engine: EngineSettings {
            background_cpu_share: v.background_cpu_share,
            ..engine_settings(v.max_instances, &sandbox.largest())
        },
        sandbox,
        retry,
        dedup_store: v.dedup_store,
        dedup_bucket: v.dedup_bucket.clone(),
        dedup_ttl: v.dedup_ttl,
        dlq_stream: v.dlq_stream.clone(),
        compile_cache: v.compile_cache.0.clone(),
        breaker: file.breaker,
        core_buffer: v.core_buffer,
        admin_addr: v.admin_addr.0,
        shutdown_grace: v.shutdown_grace,
        values,
        origins,
    })
}

/// Host limits (defaults < file < flag/env), allow-list and per-plugin rules.
fn sandbox_policy(
    overrides: &Overrides,
    file: &FileConfig,
    values: &Values,
    origins: &mut Origins,
) -> Result<SandboxPolicy, ConfigError> {
    let from_file = file.limit_overrides();
    for layer in [&from_file, &overrides.limits] {
        layer.validate().map_err(|e| ConfigError::Invalid {
            key: e.key,
            message: e.message,
        })?;
    }
    LimitOverrides::note_origins(&overrides.limits, &from_file, &overrides.origins, origins);
    let policy = SandboxPolicy {
        defaults: Limits::default()
            .overlay(&from_file)
            .overlay(&overrides.limits),
        publish_allow: values.publish_allow.clone(),
        request_allow: values.request_allow.clone(),
        http_allow: values.http_allow.clone(),
        http_allow_private: values.http_allow_private,
        plugin_config: values.plugin_config.clone(),
        plugin_secrets: values.plugin_secrets.clone(),
        state_bucket: values.state_bucket.0.clone(),
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
    if let Some(v) = o.jitter {
        policy.jitter = v;
    }
    policy
}

#[cfg(test)]
mod tests;
