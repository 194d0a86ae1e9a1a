//! `sluice run`: serve until SIGINT or SIGTERM, then shut down gracefully.
//!
//! The first signal starts a graceful shutdown (see `service`): the process
//! exits 0 once in-flight events finished or `shutdown_grace` ran out. A
//! second signal exits at once with status 130; JetStream events then still
//! in flight are redelivered after their `ack_wait`, core events are lost.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::RunArgs;
use crate::config::Settings;
use crate::{service, telemetry};

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = super::settings(args.config.as_deref(), &args.settings.overrides())?;
    telemetry::init(settings.log_format, &settings.log);
    serve_until_signal(settings, || {}).await
}

/// Start the host and serve until a signal; exit 0 after a graceful stop.
/// `on_force` runs before a second signal exits the process at once.
pub async fn serve_until_signal(
    settings: Settings,
    on_force: impl FnOnce() + Send + 'static,
) -> anyhow::Result<ExitCode> {
    tracing::info!(
        nats = %settings.nats.shown(), plugins = %settings.plugins.display(),
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
        tracing::warn!("second signal: exiting now (status 130)");
        on_force();
        std::process::exit(130);
    });
    host.wait().await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
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
