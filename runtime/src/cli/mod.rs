//! Command line: `sluice run`, `sluice dev`, `sluice config check`,
//! `sluice check`, `sluice invoke`, `sluice dlq`. Every setting flag can also be
//! set by a SLUICE_* environment variable and by the TOML file given with
//! `--config` (precedence: flag > env > file > default).

mod check;
mod config_check;
mod dev;
mod dlq;
mod grants;
mod invoke;
mod new;
mod remote;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, FromArgMatches, Parser, Subcommand};

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
    /// Scaffold a plugin folder in Rust, Python or JavaScript.
    New(new::NewArgs),
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

/// Every declared setting as a flag and SLUICE_* env var (see
/// docs/operations.md), built from the settings table ([`crate::config::table`]).
#[derive(Debug, Clone, Default)]
pub struct SettingsArgs {
    overrides: Box<Overrides>,
}

/// Only the settings `sluice dlq` uses (marked `dlq` in the table: the NATS
/// connection and the DLQ stream), accepted before or after the subcommand.
#[derive(Debug, Clone, Default)]
pub struct DlqSettingsArgs {
    overrides: Box<Overrides>,
}

/// clap plumbing for an args struct holding [`Overrides`] built from the
/// declared settings that `$pick` selects.
macro_rules! settings_args {
    ($name:ident, $pick:expr, $global:expr) => {
        impl $name {
            /// The flags and env vars given, as overrides of the file.
            fn overrides(&self) -> Overrides {
                (*self.overrides).clone()
            }
        }

        impl FromArgMatches for $name {
            fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
                Ok($name {
                    overrides: Box::new(Overrides::from_matches(m)),
                })
            }

            fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
                *self = Self::from_arg_matches(m)?;
                Ok(())
            }
        }

        impl Args for $name {
            fn augment_args(cmd: clap::Command) -> clap::Command {
                cmd.args(
                    crate::config::flags::args($pick)
                        .into_iter()
                        .map(|arg| arg.global($global)),
                )
            }

            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                Self::augment_args(cmd)
            }
        }
    };
}
settings_args!(SettingsArgs, |_| true, false);
settings_args!(DlqSettingsArgs, |s| s.has("dlq"), true);

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

/// A duration flag outside the settings table (`sluice invoke --timeout`),
/// parsed like every declared duration.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    <std::time::Duration as crate::config::value::SettingValue>::parse(s)
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
            Command::New(args) => new::new(args),
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
    use crate::limits::ByteSize;

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
