//! Command line: `sluice run`, `sluice dev`, `sluice config check`,
//! `sluice check`, `sluice invoke`, `sluice dlq`. Every setting flag can also be
//! set by a SLUICE_* environment variable and by the TOML file given with
//! `--config` (precedence: flag > env > file > default).

mod check;
mod config_check;
mod dev;
mod dlq;
mod invoke;
mod remote;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Overrides, Secret};
use crate::limits::{ByteSize, LimitOverrides};

/// Route NATS events to sandboxed WebAssembly consumer plugins.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve every plugin in the plugin folder.
    Run(RunArgs),
    /// Serve a plugin folder on a laptop: start a local nats-server if none answers.
    Dev(dev::DevArgs),
    /// Validate configuration.
    Config(config_check::ConfigArgs),
    /// Check that a file is a sluice plugin component; list its imports.
    Check(check::CheckArgs),
    /// Run a plugin on one event without NATS; print outcome, logs and publishes.
    Invoke(invoke::InvokeArgs),
    /// List, replay or purge dead-lettered events.
    Dlq(dlq::DlqArgs),
    /// Status of every plugin of a running host (through its admin endpoint).
    Plugins(remote::PluginsArgs),
    /// Force a plugin's circuit breaker open or closed, or back to auto.
    Breaker(remote::BreakerArgs),
}

/// Flags of `sluice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file; its keys are the long flag names with `_` for `-`.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: SettingsArgs,
}

/// Every host setting as a flag and SLUICE_* env var (see docs/operations.md).
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222].
    #[arg(long, env = "SLUICE_NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,
    #[command(flatten)]
    nats: NatsArgs,
    /// Plugin folder with <name>.wasm + <name>.toml [default: plugins].
    #[arg(long, env = "SLUICE_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Log format: pretty or json [default: pretty].
    #[arg(long, env = "SLUICE_LOG_FORMAT")]
    log_format: Option<String>,
    /// Log filter in RUST_LOG syntax [default: info].
    #[arg(long, env = "SLUICE_LOG")]
    log: Option<String>,
    /// Host-wide cap on live plugin instances [default: 256].
    #[arg(long, env = "SLUICE_MAX_INSTANCES")]
    max_instances: Option<u32>,
    /// Cores' worth of CPU that long-running plugin invocations get, all
    /// together, while short events are flowing [default: 0.1].
    #[arg(long, env = "SLUICE_BACKGROUND_CPU_SHARE")]
    background_cpu_share: Option<f64>,
    /// Subject patterns any plugin may publish to, comma-separated, whatever
    /// its manifest grants [default: no restriction beyond the manifest].
    #[arg(long, env = "SLUICE_PUBLISH_ALLOW", value_delimiter = ',')]
    publish_allow: Option<Vec<String>>,
    /// Dedup store: kv (NATS KV bucket shared by hosts) or memory [default: kv].
    #[arg(long, env = "SLUICE_DEDUP_STORE")]
    dedup_store: Option<String>,
    /// KV bucket for dedup records [default: sluice-dedup].
    #[arg(long, env = "SLUICE_DEDUP_BUCKET")]
    dedup_bucket: Option<String>,
    /// How long completed idempotency keys are remembered [default: 24h].
    #[arg(long, env = "SLUICE_DEDUP_TTL", value_parser = parse_duration)]
    dedup_ttl: Option<Duration>,
    /// DLQ stream name [default: SLUICE_DLQ].
    #[arg(long, env = "SLUICE_DLQ_STREAM")]
    dlq_stream: Option<String>,
    /// Compile cache folder, or `off` [default: ~/.cache/sluice/compiled].
    #[arg(long, env = "SLUICE_COMPILE_CACHE")]
    compile_cache: Option<String>,
    /// Admin HTTP endpoint (/healthz /readyz /metrics /plugins), IP:PORT or off [default: off].
    #[arg(long, env = "SLUICE_ADMIN_ADDR")]
    admin_addr: Option<String>,
    /// How long in-flight events may finish at shutdown [default: 10s].
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE", value_parser = parse_duration)]
    shutdown_grace: Option<Duration>,
    #[command(flatten)]
    limits: LimitArgs,
}

/// The per-plugin limits: host-wide defaults that no manifest may exceed.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Time limit per event (wall clock), e.g. 5s or 250ms [default: 5s].
    #[arg(long, env = "SLUICE_TIMEOUT", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Events of one plugin handled at once [default: 32].
    #[arg(long, env = "SLUICE_MAX_CONCURRENCY")]
    max_concurrency: Option<u32>,
    /// Linear memory per plugin instance, in MiB [default: 64].
    #[arg(long, env = "SLUICE_MAX_MEMORY_MB")]
    max_memory_mb: Option<u32>,
    /// Table elements per plugin instance [default: 20000].
    #[arg(long, env = "SLUICE_MAX_TABLE_ELEMENTS")]
    max_table_elements: Option<u32>,
    /// Core WebAssembly instances per plugin instance [default: 16].
    #[arg(long, env = "SLUICE_MAX_CORE_INSTANCES")]
    max_core_instances: Option<u32>,
    /// Largest event payload handed to a plugin, e.g. 4MiB [default: 4MiB].
    #[arg(long, env = "SLUICE_MAX_PAYLOAD")]
    max_payload: Option<ByteSize>,
    /// Messages one event may publish [default: 100].
    #[arg(long, env = "SLUICE_MAX_PUBLISHES")]
    max_publishes: Option<u32>,
    /// Bytes one event may publish (payloads, subjects, headers) [default: 4MiB].
    #[arg(long, env = "SLUICE_MAX_PUBLISH_BYTES")]
    max_publish_bytes: Option<ByteSize>,
    /// Log records plus stdout/stderr lines logged per event [default: 100].
    #[arg(long, env = "SLUICE_MAX_LOG_LINES")]
    max_log_lines: Option<u32>,
    /// Log lines per second per plugin, across its events [default: 100].
    #[arg(long, env = "SLUICE_MAX_LOG_RATE")]
    max_log_rate: Option<u32>,
}

/// NATS authentication, TLS and connect timeout flags (shared by `run`, `dev`,
/// `config check` and `dlq`).
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// NATS user name (with --nats-password).
    #[arg(long, env = "SLUICE_NATS_USER")]
    nats_user: Option<String>,
    /// NATS password; prefer the env var or the file (flags show in `ps`).
    #[arg(long, env = "SLUICE_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<Secret>,
    /// NATS token; prefer the env var or the file (flags show in `ps`).
    #[arg(long, env = "SLUICE_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<Secret>,
    /// File holding an NKey seed (`SU...`).
    #[arg(long, env = "SLUICE_NATS_NKEY_FILE")]
    nats_nkey_file: Option<PathBuf>,
    /// NATS credentials file (.creds: user JWT + seed).
    #[arg(long, env = "SLUICE_NATS_CREDS_FILE")]
    nats_creds_file: Option<PathBuf>,
    /// CA certificates (PEM) for the server's TLS certificate; turns TLS on.
    #[arg(long, env = "SLUICE_NATS_TLS_CA")]
    nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; turns TLS on.
    #[arg(long, env = "SLUICE_NATS_TLS_CERT")]
    nats_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, env = "SLUICE_NATS_TLS_KEY")]
    nats_tls_key: Option<PathBuf>,
    /// Time limit of one NATS connection attempt [default: 5s].
    #[arg(long, env = "SLUICE_NATS_CONNECT_TIMEOUT", value_parser = parse_duration)]
    nats_connect_timeout: Option<Duration>,
}

impl NatsArgs {
    /// Put these flags into `o`.
    fn apply(&self, o: &mut Overrides) {
        o.nats_user = self.nats_user.clone();
        o.nats_password = self.nats_password.clone();
        o.nats_token = self.nats_token.clone();
        o.nats_nkey_file = self.nats_nkey_file.clone();
        o.nats_creds_file = self.nats_creds_file.clone();
        o.nats_tls_ca = self.nats_tls_ca.clone();
        o.nats_tls_cert = self.nats_tls_cert.clone();
        o.nats_tls_key = self.nats_tls_key.clone();
        o.nats_connect_timeout = self.nats_connect_timeout;
    }
}

impl SettingsArgs {
    fn overrides(&self) -> Overrides {
        let l = &self.limits;
        let mut o = Overrides {
            nats_url: self.nats_url.clone(),
            plugins: self.plugins.clone(),
            log_format: self.log_format.clone(),
            log: self.log.clone(),
            max_instances: self.max_instances,
            dedup_store: self.dedup_store.clone(),
            dedup_bucket: self.dedup_bucket.clone(),
            dedup_ttl: self.dedup_ttl,
            dlq_stream: self.dlq_stream.clone(),
            compile_cache: self.compile_cache.clone(),
            admin_addr: self.admin_addr.clone(),
            shutdown_grace: self.shutdown_grace,
            background_cpu_share: self.background_cpu_share,
            publish_allow: self.publish_allow.clone(),
            limits: LimitOverrides {
                timeout: l.timeout,
                max_concurrency: l.max_concurrency,
                max_memory_mb: l.max_memory_mb,
                max_table_elements: l.max_table_elements,
                max_core_instances: l.max_core_instances,
                max_payload: l.max_payload,
                max_publishes: l.max_publishes,
                max_publish_bytes: l.max_publish_bytes,
                max_log_lines: l.max_log_lines,
                max_log_rate: l.max_log_rate,
            },
            ..Overrides::default()
        };
        self.nats.apply(&mut o);
        o
    }
}

/// Read `file` (if any) and merge `args` over it into validated settings.
fn settings(
    file: Option<&std::path::Path>,
    overrides: &Overrides,
) -> Result<crate::config::Settings, crate::config::ConfigError> {
    let file = match file {
        Some(path) => crate::config::FileConfig::load(path)?,
        None => crate::config::FileConfig::default(),
    };
    crate::config::resolve(overrides, file)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); use e.g. 5s or 250ms"))
}

/// Parse arguments and run the command; errors are printed, not panicked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Dev(args) => dev::dev(args).await,
            Command::Config(args) => config_check::config(args),
            Command::Check(args) => check::check(args).await,
            Command::Invoke(args) => invoke::invoke(args).await,
            Command::Dlq(args) => dlq::dlq(args).await,
            Command::Plugins(args) => remote::plugins(args).await,
            Command::Breaker(args) => remote::breaker(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))?;
        match cli.command {
            Command::Run(args) => Ok(args),
            _ => unreachable!("only `run` is parsed here"),
        }
    }

    #[test]
    fn limit_flags_and_the_allow_list_become_overrides() {
        let args = run_args(&[
            "run",
            "--max-payload",
            "256KiB",
            "--max-publish-bytes",
            "1048576",
            "--max-log-rate",
            "10",
            "--publish-allow",
            "orders.>,audit.>",
            "--background-cpu-share",
            "0.5",
        ])
        .unwrap();
        let o = args.settings.overrides();
        assert_eq!(o.limits.max_payload, Some(ByteSize(256 << 10)));
        assert_eq!(o.limits.max_publish_bytes, Some(ByteSize(1 << 20)));
        assert_eq!(o.limits.max_log_rate, Some(10));
        assert_eq!(o.background_cpu_share, Some(0.5));
        assert_eq!(
            o.publish_allow,
            Some(vec!["orders.>".to_string(), "audit.>".to_string()])
        );
        let e = run_args(&["run", "--max-payload", "huge"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--max-payload") && e.contains("huge"), "{e}");
    }
}
