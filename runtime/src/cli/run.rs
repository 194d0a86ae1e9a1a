//! `sluice run`: serve until SIGINT or SIGTERM, then shut down gracefully.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::RunArgs;
use crate::config::{self, FileConfig};
use crate::{service, telemetry};

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let settings = config::resolve(&args.overrides(), file)?;
    telemetry::init(settings.log_format, &settings.log);
    tracing::info!(
        nats = %settings.nats_urls.join(","), plugins = %settings.plugins.display(),
        "starting sluice {}", env!("CARGO_PKG_VERSION")
    );
    let host = service::start(settings)
        .await
        .context("sluice cannot start")?;
    let stop = host.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; shutting down (send it again to force exit)");
        stop.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    host.wait().await?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
