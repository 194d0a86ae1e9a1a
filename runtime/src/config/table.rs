//! THE table of host settings. Each entry is the whole declaration of one
//! setting: its file key (the flag is the key with `-`, the variable is
//! `SLUICE_` + the key in capitals), type, default, help and check. The
//! per-plugin limits are declared the same way in [`crate::limits`].
//! Adding a setting = adding an entry here (see docs/operations.md,
//! "Adding a setting"), then reading `settings.values.<key>` where it is used.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::check;
use super::declare::declare_settings;
use super::value::{KeyValues, OrOff, Secret, Switch};
use super::{DedupStoreKind, LogFormat};
use crate::delivery::breaker::BreakerOverrides;
use crate::manifest::RetryOverrides;

declare_settings! {
    file_tables {
        /// Default retry policy.
        #[serde(default)]
        pub retry: RetryOverrides,
        /// Default circuit breaker policy.
        #[serde(default)]
        pub breaker: BreakerOverrides,
        /// The operator's rules per plugin name: `[plugin.<name>]`.
        #[serde(default)]
        pub plugin: BTreeMap<String, PluginRules>,
    }

    // Host settings that a `[plugin.<name>]` table may replace for one plugin.
    per_plugin {
        /// Subject patterns any plugin may publish to, comma-separated, whatever its manifest grants.
        publish_allow: Vec<String> as "PATTERNS", unset "none (the manifest's grants apply)"
            => Option<Vec<String>> = check::publish_allow;
        /// Subject patterns any plugin may send requests to, comma-separated, whatever its manifest's
        /// `request` grants.
        request_allow: Vec<String> as "PATTERNS", unset "none (the manifest's `request` grants apply)"
            => Option<Vec<String>> = check::publish_allow;
        /// HTTP origins any plugin may call, comma-separated (`https://api.example.com`,
        /// `https://*.example.com`, `http://127.0.0.1:*`), whatever its manifest's `http` origins.
        http_allow: Vec<String> as "ORIGINS", unset "none (the manifest's `http` origins apply)"
            => Option<Vec<String>> = check::http_origins;
        /// Let plugins' HTTP requests reach private, loopback, link-local and unspecified addresses
        /// (true or false); off, a host resolving to one is refused.
        http_allow_private: Switch as "true|false" = Switch::from(false) => bool = check::switch;
        /// Configuration plugins read with `config.get`, replacing their manifest's `[config]` keys.
        plugin_config: KeyValues, unset "none (the manifest's `[config]` applies)"
            => Option<KeyValues> = check::config_values;
        /// Secrets plugins read with `config.get`, as references only: `key = "env:VARIABLE"` or
        /// `key = "file:PATH"`, read when a plugin loads, never shown or logged.
        plugin_secrets: KeyValues as "KEY=REF,...", unset "none"
            => Option<KeyValues> = check::secret_refs;
        /// NATS KV bucket holding plugin state (each plugin its own key space), or off to refuse state
        /// to plugins whose manifest asks for it.
        state_bucket: String as "NAME|off" = "sluice-state".into()
            => OrOff<String> = check::state_bucket;
    }

    host {

        /// NATS server URL(s), comma-separated; `nats://`, `tls://`, `ws://` or `wss://`.
        nats_url: String as "URLS" = "nats://127.0.0.1:4222".into() => check::UrlList = check::nats_urls, hide_env, dlq;
        /// NATS user name (with nats_password).
        nats_user: String as "NAME", unset "no authentication" => Option<String> = check::any, dlq;
        /// NATS password (with nats_user); prefer the env var or the file (flags show in `ps`).
        nats_password: Secret, unset "none" => Option<Secret> = check::any, secret, dlq;
        /// NATS authentication token; prefer the env var or the file (flags show in `ps`).
        nats_token: Secret, unset "none" => Option<Secret> = check::any, secret, dlq;
        /// File holding an NKey seed (`SU...`).
        nats_nkey_file: PathBuf as "FILE", unset "none" => Option<PathBuf> = check::any, dlq;
        /// NATS credentials file (.creds: user JWT + seed).
        nats_creds_file: PathBuf as "FILE", unset "none" => Option<PathBuf> = check::any, dlq;
        /// PEM CA certificate(s) trusted for the server's TLS certificate; turns TLS on.
        nats_tls_ca: PathBuf as "FILE", unset "no TLS (unless a `tls://` URL)" => Option<PathBuf> = check::any, dlq;
        /// PEM client certificate for mutual TLS (with nats_tls_key); turns TLS on.
        nats_tls_cert: PathBuf as "FILE", unset "none" => Option<PathBuf> = check::any, dlq;
        /// PEM private key of the client certificate.
        nats_tls_key: PathBuf as "FILE", unset "none" => Option<PathBuf> = check::any, dlq;
        /// Time limit of one NATS connection attempt.
        nats_connect_timeout: Duration = crate::nats::DEFAULT_CONNECT_TIMEOUT
            => Duration = check::positive_duration, dlq;
        /// Plugin folder with <name>.wasm + <name>.toml.
        plugins: PathBuf as "DIR" = PathBuf::from("plugins") => PathBuf = check::any;
        /// Admin HTTP endpoint (/healthz /readyz /metrics /plugins): IP:PORT, localhost:PORT or off
        /// (`sluice dev`: 127.0.0.1:9464).
        admin_addr: String as "IP:PORT|off" = "off".into() => OrOff<std::net::SocketAddr> = check::admin_addr;
        /// Log format: pretty or json.
        log_format: String as "pretty|json" = "pretty".into() => LogFormat = check::log_format;
        /// Log filter in RUST_LOG syntax, e.g. warn,sluice=info (RUST_LOG, if set, wins).
        log: String as "FILTER" = "info".into() => String = check::any;
        /// Host-wide cap on live plugin instances (1-10000): the pool's slots; events wait for a free one.
        max_instances: u32 = 256 => u32 = check::max_instances;
        /// Cores' worth of CPU that long-running plugin invocations get, all together, while short
        /// events are flowing (0.01-1024).
        background_cpu_share: f64 as "CORES" = crate::engine::governor::DEFAULT_BACKGROUND_SHARE
            => f64 = check::background_cpu_share;
        /// Dedup store: kv (NATS KV bucket shared by hosts) or memory (this host only).
        dedup_store: String as "kv|memory" = "kv".into() => DedupStoreKind = check::dedup_store;
        /// KV bucket for dedup records.
        dedup_bucket: String as "NAME" = "sluice-dedup".into() => String = check::dedup_bucket;
        /// How long completed idempotency keys are remembered (at least 1s).
        dedup_ttl: Duration = Duration::from_secs(24 * 3600) => Duration = check::dedup_ttl;
        /// Replicas (1-5) of what the host creates in JetStream: streams of plugins with
        /// `create_stream = true`, the DLQ stream and the dedup KV bucket; 3 on a three-node cluster.
        replicas: usize = 1 => usize = check::replicas;
        /// DLQ stream name.
        dlq_stream: String as "NAME" = crate::delivery::dead_letter::DEFAULT_DLQ_STREAM.into()
            => String = check::dlq_stream, dlq;
        /// How long in-flight events may finish at shutdown (SIGTERM/SIGINT).
        shutdown_grace: Duration = super::DEFAULT_SHUTDOWN_GRACE => Duration = check::any;
        /// Compile cache folder (compiled components, checksummed), or off.
        compile_cache: String as "DIR|off", unset "`$XDG_CACHE_HOME/sluice/compiled` or `~/.cache/sluice/compiled`"
            => OrOff<PathBuf> = check::compile_cache;
        /// Core NATS events buffered per plugin while every slot is busy; past it they are dropped
        /// and counted (a manifest may set its own).
        core_buffer: usize = 10_000 => usize = check::core_buffer;
    }
}

/// A file-only table, for the docs.
#[derive(Debug)]
pub struct TableDoc {
    /// How it is written (`[retry]`).
    pub key: &'static str,
    /// Its default (`{docs}` stands for the path to docs/ from the page).
    pub default: &'static str,
    /// What it holds.
    pub meaning: &'static str,
}

/// The config file's tables (not flags): listed in the generated docs.
pub const TABLES: &[TableDoc] = &[
    TableDoc {
        key: "[plugin.<name>]",
        default: "none",
        meaning: "the operator's rules for one plugin: any per-plugin limit key (its ceiling, raised or lowered) and any per-plugin setting (replacing the host-wide value for it)",
    },
    TableDoc {
        key: "[retry]",
        default: "see [manifest.md]({docs}manifest.md#retry)",
        meaning: "default retry policy (`max_attempts`, `initial_delay`, `multiplier`, `max_delay`, `max_elapsed`, `jitter`)",
    },
    TableDoc {
        key: "[breaker]",
        default: "see [manifest.md]({docs}manifest.md#breaker)",
        meaning: "default circuit breaker policy (`consecutive_failures`, `failure_rate`, `window`, `min_volume`, `cool_down`, `max_cool_down`, `probes`, `when_open`)",
    },
];
