//! Host configuration: a TOML file (`--config`), SLUICE_* environment
//! variables and flags, merged with precedence flag > env > file > default,
//! then validated into [`Settings`]. Flags and env arrive together as
//! [`Overrides`] (clap reads both); the file is [`FileConfig`].
//!
//! Validation happens here, once, so that a bad value stops the host at start
//! with the key named, and so that `sluice config check` can show exactly what
//! a running host would use. Secrets (passwords, tokens, seeds) are held in
//! [`Secret`], whose `Debug` never prints them, and [`render`] masks them.
//!
//! The per-plugin limit keys (`timeout`, `max_memory_mb`, `max_payload`, ...)
//! set host-wide defaults that are also every plugin's ceiling; the file's
//! `[plugin.<name>]` tables set one plugin's ceiling and publish allow-list
//! (see [`crate::limits`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::delivery::RetryPolicy;
use crate::delivery::breaker::BreakerOverrides;
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
        /// NATS user name (with `nats_password`).
        pub nats_user: Option<String>,
        /// NATS password (with `nats_user`).
        pub nats_password: Option<Secret>,
        /// NATS authentication token.
        pub nats_token: Option<Secret>,
        /// File holding an NKey seed (`SU...`).
        pub nats_nkey_file: Option<PathBuf>,
        /// NATS credentials file (`.creds`: user JWT and NKey seed).
        pub nats_creds_file: Option<PathBuf>,
        /// PEM file of CA certificates that sign the server's certificate.
        pub nats_tls_ca: Option<PathBuf>,
        /// PEM client certificate (with `nats_tls_key`).
        pub nats_tls_cert: Option<PathBuf>,
        /// PEM private key of the client certificate.
        pub nats_tls_key: Option<PathBuf>,
        /// Time limit of one connection attempt.
        #[serde(default, with = "humantime_serde")]
        pub nats_connect_timeout: Option<Duration>,
        /// Admin HTTP endpoint address (`IP:PORT`), or `off`.
        pub admin_addr: Option<String>,
        /// How long in-flight events may take to finish at shutdown.
        #[serde(default, with = "humantime_serde")]
        pub shutdown_grace: Option<Duration>,
        /// Default retry policy.
        #[serde(default)]
        pub retry: RetryOverrides,
        /// Default circuit breaker policy.
        #[serde(default)]
        pub breaker: BreakerOverrides,
        /// Default core NATS buffer per plugin.
        pub core_buffer: Option<usize>,
        /// Cores' worth of CPU long-running invocations get while short events flow.
        pub background_cpu_share: Option<f64>,
        /// Subject patterns any plugin may publish to, whatever its manifest grants.
        pub publish_allow: Option<Vec<String>>,
        /// The operator's rules per plugin name: `[plugin.<name>]`.
        #[serde(default)]
        pub plugin: BTreeMap<String, PluginRules>,
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
    /// `--nats-user` / `SLUICE_NATS_USER`.
    pub nats_user: Option<String>,
    /// `--nats-password` / `SLUICE_NATS_PASSWORD`.
    pub nats_password: Option<Secret>,
    /// `--nats-token` / `SLUICE_NATS_TOKEN`.
    pub nats_token: Option<Secret>,
    /// `--nats-nkey-file` / `SLUICE_NATS_NKEY_FILE`.
    pub nats_nkey_file: Option<PathBuf>,
    /// `--nats-creds-file` / `SLUICE_NATS_CREDS_FILE`.
    pub nats_creds_file: Option<PathBuf>,
    /// `--nats-tls-ca` / `SLUICE_NATS_TLS_CA`.
    pub nats_tls_ca: Option<PathBuf>,
    /// `--nats-tls-cert` / `SLUICE_NATS_TLS_CERT`.
    pub nats_tls_cert: Option<PathBuf>,
    /// `--nats-tls-key` / `SLUICE_NATS_TLS_KEY`.
    pub nats_tls_key: Option<PathBuf>,
    /// `--nats-connect-timeout` / `SLUICE_NATS_CONNECT_TIMEOUT`.
    pub nats_connect_timeout: Option<Duration>,
    /// `--admin-addr` / `SLUICE_ADMIN_ADDR`.
    pub admin_addr: Option<String>,
    /// `--shutdown-grace` / `SLUICE_SHUTDOWN_GRACE`.
    pub shutdown_grace: Option<Duration>,
    /// `--background-cpu-share` / `SLUICE_BACKGROUND_CPU_SHARE`.
    pub background_cpu_share: Option<f64>,
    /// `--publish-allow` / `SLUICE_PUBLISH_ALLOW`.
    pub publish_allow: Option<Vec<String>>,
    /// The limit flags (`--timeout`, `--max-memory-mb`, ...) and their env vars.
    pub limits: LimitOverrides,
}

/// A secret value (password, token): `Debug` and [`render`] never show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for handing to the NATS client; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// What [`render`] and logs show instead of a secret.
pub const MASK: &str = "********";

/// How the host authenticates to NATS (at most one method).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (or credentials embedded in the URL).
    None,
    /// User name and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
    },
    /// A token.
    Token(Secret),
    /// An NKey seed read from `file`.
    NKey {
        /// The seed file.
        file: PathBuf,
        /// The seed.
        seed: Secret,
    },
    /// A credentials file (user JWT + seed), read at each connect.
    Creds(PathBuf),
}

/// TLS settings of the NATS connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// CA certificates (PEM) trusted for the server certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl NatsTls {
    /// Whether TLS is configured (the connection then requires TLS).
    pub fn enabled(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }
}

/// Validated NATS connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// Server URLs.
    pub urls: Vec<String>,
    /// Authentication.
    pub auth: NatsAuth,
    /// TLS.
    pub tls: NatsTls,
    /// Time limit of one connection attempt.
    pub connect_timeout: Duration,
}

impl NatsSettings {
    /// Defaults for `urls`: no auth, no TLS, a 5 s connect timeout.
    pub fn plain(urls: Vec<String>) -> Self {
        NatsSettings {
            urls,
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The URLs joined for logs, with any embedded password masked.
    pub fn shown(&self) -> String {
        self.urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Default time limit of one NATS connection attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time in-flight events get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A NATS URL with the password of `user:password@` (or a token) masked.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{MASK}"),
                None => MASK.to_string(),
            };
            format!("{scheme}{user}@{host}")
        }
        None => url.to_string(),
    }
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
    /// How long in-flight events may take to finish at shutdown.
    pub shutdown_grace: Duration,
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
        .or(file.nats_url.clone())
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
    let nats = NatsSettings {
        auth: resolve_auth(overrides, &file)?,
        tls: resolve_tls(overrides, &file)?,
        connect_timeout: overrides
            .nats_connect_timeout
            .or(file.nats_connect_timeout)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        urls: nats_urls,
    };
    if nats.connect_timeout.is_zero() {
        return Err(invalid(
            "nats_connect_timeout",
            "must be greater than zero, e.g. \"5s\"".into(),
        ));
    }
    let admin_addr = match overrides.admin_addr.clone().or(file.admin_addr.clone()) {
        None => None,
        Some(text) => parse_admin_addr(&text).map_err(|m| invalid("admin_addr", m))?,
    };
    let shutdown_grace = overrides
        .shutdown_grace
        .or(file.shutdown_grace)
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
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
        nats,
        admin_addr,
        shutdown_grace,
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

/// The one authentication method configured, with its files read and checked.
fn resolve_auth(o: &Overrides, file: &FileConfig) -> Result<NatsAuth, ConfigError> {
    let user = o.nats_user.clone().or(file.nats_user.clone());
    let password = o.nats_password.clone().or(file.nats_password.clone());
    let token = o.nats_token.clone().or(file.nats_token.clone());
    let nkey = o.nats_nkey_file.clone().or(file.nats_nkey_file.clone());
    let creds = o.nats_creds_file.clone().or(file.nats_creds_file.clone());
    let set: Vec<&'static str> = [
        (
            user.is_some() || password.is_some(),
            "nats_user/nats_password",
        ),
        (token.is_some(), "nats_token"),
        (nkey.is_some(), "nats_nkey_file"),
        (creds.is_some(), "nats_creds_file"),
    ]
    .into_iter()
    .filter_map(|(is_set, key)| is_set.then_some(key))
    .collect();
    if set.len() > 1 {
        return Err(ConfigError::Invalid {
            key: set[1],
            message: format!(
                "conflicts with {}; configure one NATS authentication method",
                set[0]
            ),
        });
    }
    let read = |key: &'static str, path: &Path| {
        std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            key,
            message: format!("cannot read {}: {e}", path.display()),
        })
    };
    Ok(match (user, password, token, nkey, creds) {
        (Some(user), Some(password), ..) => NatsAuth::UserPassword { user, password },
        (Some(_), None, ..) => {
            return Err(ConfigError::Invalid {
                key: "nats_password",
                message: "is required with nats_user (SLUICE_NATS_PASSWORD)".into(),
            });
        }
        (None, Some(_), ..) => {
            return Err(ConfigError::Invalid {
                key: "nats_user",
                message: "is required with nats_password (SLUICE_NATS_USER)".into(),
            });
        }
        (_, _, Some(token), ..) => NatsAuth::Token(token),
        (_, _, _, Some(file), _) => {
            let seed = read("nats_nkey_file", &file)?.trim().to_string();
            if nkeys::KeyPair::from_seed(&seed).is_err() {
                return Err(ConfigError::Invalid {
                    key: "nats_nkey_file",
                    message: format!(
                        "{} does not hold an NKey seed (a line starting with `SU`); generate one with `nk -gen user`",
                        file.display()
                    ),
                });
            }
            NatsAuth::NKey {
                file,
                seed: Secret(seed),
            }
        }
        (_, _, _, _, Some(file)) => {
            let text = read("nats_creds_file", &file)?;
            if let Err(e) = async_nats::ConnectOptions::with_credentials(&text) {
                return Err(ConfigError::Invalid {
                    key: "nats_creds_file",
                    message: format!(
                        "{} is not a NATS credentials file ({e}); use the .creds file `nsc generate creds` writes",
                        file.display()
                    ),
                });
            }
            NatsAuth::Creds(file)
        }
        _ => NatsAuth::None,
    })
}

/// TLS files, each checked to be readable.
fn resolve_tls(o: &Overrides, file: &FileConfig) -> Result<NatsTls, ConfigError> {
    let check = |key: &'static str, path: Option<PathBuf>| match path {
        Some(path) => match std::fs::File::open(&path) {
            Ok(_) => Ok(Some(path)),
            Err(e) => Err(ConfigError::Invalid {
                key,
                message: format!("cannot read {}: {e}", path.display()),
            }),
        },
        None => Ok(None),
    };
    let ca = check(
        "nats_tls_ca",
        o.nats_tls_ca.clone().or(file.nats_tls_ca.clone()),
    )?;
    let cert = check(
        "nats_tls_cert",
        o.nats_tls_cert.clone().or(file.nats_tls_cert.clone()),
    )?;
    let key = check(
        "nats_tls_key",
        o.nats_tls_key.clone().or(file.nats_tls_key.clone()),
    )?;
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::Invalid {
                key: "nats_tls_key",
                message: "is required with nats_tls_cert (the client certificate's private key)"
                    .into(),
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Invalid {
                key: "nats_tls_cert",
                message: "is required with nats_tls_key (the client certificate)".into(),
            });
        }
    };
    Ok(NatsTls { ca, client })
}

/// `IP:PORT` (or `localhost:PORT`); `off` or empty disables the endpoint.
fn parse_admin_addr(text: &str) -> Result<Option<SocketAddr>, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    if let Some(port) = text
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(Some(SocketAddr::from(([127, 0, 0, 1], port))));
    }
    Err(format!(
        "`{text}` is not an address; use IP:PORT, e.g. 127.0.0.1:9464, or `off`"
    ))
}

/// The effective configuration as a TOML config file, secrets masked: what
/// `sluice config check` prints. Every key is present.
pub fn render(settings: &Settings) -> String {
    use toml::Value;
    let mut t = toml::Table::new();
    let text = |s: &str| Value::String(s.to_string());
    let path = |p: &Path| Value::String(p.display().to_string());
    let duration = |d: Duration| Value::String(humantime::format_duration(d).to_string());
    let nats = &settings.nats;
    t.insert(
        "nats_url".into(),
        text(
            &nats
                .urls
                .iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(","),
        ),
    );
    match &nats.auth {
        NatsAuth::None => {}
        NatsAuth::UserPassword { user, .. } => {
            t.insert("nats_user".into(), text(user));
            t.insert("nats_password".into(), text(MASK));
        }
        NatsAuth::Token(_) => {
            t.insert("nats_token".into(), text(MASK));
        }
        NatsAuth::NKey { file, .. } => {
            t.insert("nats_nkey_file".into(), path(file));
        }
        NatsAuth::Creds(file) => {
            t.insert("nats_creds_file".into(), path(file));
        }
    }
    if let Some(ca) = &nats.tls.ca {
        t.insert("nats_tls_ca".into(), path(ca));
    }
    if let Some((cert, key)) = &nats.tls.client {
        t.insert("nats_tls_cert".into(), path(cert));
        t.insert("nats_tls_key".into(), path(key));
    }
    t.insert(
        "nats_connect_timeout".into(),
        duration(nats.connect_timeout),
    );
    t.insert("plugins".into(), path(&settings.plugins));
    t.insert(
        "log_format".into(),
        text(match settings.log_format {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }),
    );
    t.insert("log".into(), text(&settings.log));
    t.insert(
        "max_instances".into(),
        Value::Integer(settings.engine.max_instances.into()),
    );
    crate::limits::render_into(&mut t, &settings.sandbox);
    t.insert(
        "background_cpu_share".into(),
        Value::Float(settings.engine.background_cpu_share),
    );
    t.insert(
        "compile_cache".into(),
        match &settings.compile_cache {
            Some(dir) => path(dir),
            None => text("off"),
        },
    );
    t.insert(
        "core_buffer".into(),
        Value::Integer(i64::try_from(settings.core_buffer).unwrap_or(i64::MAX)),
    );
    t.insert(
        "dedup_store".into(),
        text(match settings.dedup_store {
            DedupStoreKind::Kv => "kv",
            DedupStoreKind::Memory => "memory",
        }),
    );
    t.insert("dedup_bucket".into(), text(&settings.dedup_bucket));
    t.insert("dedup_ttl".into(), duration(settings.dedup_ttl));
    t.insert("dlq_stream".into(), text(&settings.dlq_stream));
    t.insert(
        "admin_addr".into(),
        match settings.admin_addr {
            Some(addr) => text(&addr.to_string()),
            None => text("off"),
        },
    );
    t.insert("shutdown_grace".into(), duration(settings.shutdown_grace));
    let retry = &settings.retry;
    let mut r = toml::Table::new();
    r.insert(
        "max_attempts".into(),
        Value::Integer(retry.max_attempts.into()),
    );
    r.insert("initial_delay".into(), duration(retry.initial_delay));
    r.insert("multiplier".into(), Value::Float(retry.multiplier));
    r.insert("max_delay".into(), duration(retry.max_delay));
    if let Some(max_elapsed) = retry.max_elapsed {
        r.insert("max_elapsed".into(), duration(max_elapsed));
    }
    r.insert(
        "jitter".into(),
        text(match retry.jitter {
            crate::delivery::Jitter::Full => "full",
            crate::delivery::Jitter::Equal => "equal",
            crate::delivery::Jitter::None => "none",
        }),
    );
    t.insert("retry".into(), Value::Table(r));
    toml::to_string(&t).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
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
}
