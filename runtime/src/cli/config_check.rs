//! `sluice config check FILE`: validate a config file together with the
//! SLUICE_* environment and flags, exactly as `sluice run` would, and print
//! the effective configuration (every key, secrets masked, each setting
//! followed by where its value came from) as TOML, then, as comments, the
//! effective grants of the plugins in the plugin folder. `sluice config docs`
//! prints the settings reference table generated from the declarations.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::SettingsArgs;
use crate::config;

/// Arguments of `sluice config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate FILE (plus SLUICE_* env and flags) and print the effective config, secrets masked.
    Check {
        /// The TOML config file.
        file: PathBuf,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Print the settings reference (markdown), generated from the settings declarations.
    Docs,
}

pub fn config(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ConfigCommand::Check { file, settings } => {
            let settings = super::settings(Some(&file), &settings.overrides())?;
            println!(
                "# {}: valid. Effective configuration (flag > env > file > default; secrets masked; `# origin` says which one gave each value):",
                file.display()
            );
            print!("{}", config::render_with_origins(&settings));
            print!("{}", super::grants::effective_grants(&settings));
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Docs => {
            print!("{}", config::docs::reference());
            Ok(ExitCode::SUCCESS)
        }
    }
}
