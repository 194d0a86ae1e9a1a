//! Command line: `sluice run`, `sluice check`, `sluice invoke`, `sluice dlq`. Every `run`
//! flag can also be set by a SLUICE_* environment variable and by the TOML
//! file given with `--config` (precedence: flag > env > file > default).

mod check;
mod dlq;
mod invoke;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

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
    /// Check that a file is a sluice plugin component; list its imports.
    Check(check::CheckArgs),
    /// Run a plugin on one event without NATS; print outcome, logs and publishes.
    Invoke(invoke::InvokeArgs),
    /// List, replay or purge dead-lettered events.
    Dlq(dlq::DlqArgs),
}

/// Flags of `sluice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file; its keys are the long flag names with `_` for `-`.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222].
    #[arg(long, env = "SLUICE_NATS_URL")]
    nats_url: Option<String>,
    /// Plugin folder with <name>.wasm + <name>.toml [default: plugins].
    #[arg(long, env = "SLUICE_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Log format: pretty or json [default: pretty].
    #[arg(long, env = "SLUICE_LOG_FORMAT")]
    log_format: Option<String>,
    /// Log filter in RUST_LOG syntax [default: info].
    #[arg(long, env = "SLUICE_LOG")]
    log: Option<String>,
    /// Default per-plugin cap on events handled at once [default: 32].
    #[arg(long, env = "SLUICE_MAX_CONCURRENCY")]
    max_concurrency: Option<u32>,
    /// Host-wide cap on live plugin instances [default: 256].
    #[arg(long, env = "SLUICE_MAX_INSTANCES")]
    max_instances: Option<u32>,
    /// Default time limit per event, e.g. 5s or 250ms [default: 5s].
    #[arg(long, env = "SLUICE_TIMEOUT", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Linear memory cap per plugin instance, in MiB [default: 64].
    #[arg(long, env = "SLUICE_MAX_MEMORY_MB")]
    max_memory_mb: Option<u32>,
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
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            nats_url: self.nats_url.clone(),
            plugins: self.plugins.clone(),
            log_format: self.log_format.clone(),
            log: self.log.clone(),
            max_concurrency: self.max_concurrency,
            max_instances: self.max_instances,
            timeout: self.timeout,
            max_memory_mb: self.max_memory_mb,
            dedup_store: self.dedup_store.clone(),
            dedup_bucket: self.dedup_bucket.clone(),
            dedup_ttl: self.dedup_ttl,
            dlq_stream: self.dlq_stream.clone(),
            compile_cache: self.compile_cache.clone(),
        }
    }
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
            Command::Check(args) => check::check(args).await,
            Command::Invoke(args) => invoke::invoke(args).await,
            Command::Dlq(args) => dlq::dlq(args).await,
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
