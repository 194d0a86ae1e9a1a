//! `sluice check FILE.wasm`: is this a sluice plugin, for which contract
//! version, which sluice capabilities does it import, and what does it import?

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::engine::component::{self, ComponentInfo};
use crate::engine::{EngineSettings, WasmEngine, invoke};
use crate::host;

/// Arguments of `sluice check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The component to check.
    file: PathBuf,
}

/// Check a file and describe it; `Err` carries a message that names the file.
pub async fn describe(file: &std::path::Path) -> anyhow::Result<Result<ComponentInfo, String>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let engine = WasmEngine::new(EngineSettings {
        max_instances: 4,
        ..EngineSettings::default()
    })?;
    let linker = host::linker(engine.engine()).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let compiled = {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || component::compile(&engine, &linker, &bytes)).await?
    };
    let compiled = match compiled {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if let Err(e) = invoke::smoke(&engine, &compiled).await {
        return Ok(Err(e.to_string()));
    }
    Ok(Ok(compiled.info))
}

pub async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    match describe(&args.file).await? {
        Ok(info) => {
            println!("ok: {} is a sluice plugin", args.file.display());
            println!("  contract: sluice:plugin@{}", info.contract_version);
            println!("  version:  {}", info.version);
            let capabilities: Vec<&str> = info.capabilities.iter().map(|c| c.as_str()).collect();
            println!(
                "  capabilities: {}",
                if capabilities.is_empty() {
                    "none".to_string()
                } else {
                    capabilities.join(", ")
                }
            );
            println!("  exports:");
            for export in &info.exports {
                println!("    {export}");
            }
            println!("  imports:");
            for import in &info.imports {
                println!("    {import}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => {
            eprintln!(
                "error: {} is not a usable sluice plugin: {reason}",
                args.file.display()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
