//! Commands that talk to a running host through its admin endpoint:
//! `sluice plugins` (status of every plugin) and `sluice breaker` (force a
//! plugin's circuit breaker open or closed, or back to automatic).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

/// Where the running host's admin endpoint listens.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// The host's admin endpoint, IP:PORT (its `admin_addr`).
    #[arg(long, env = "SLUICE_ADMIN_ADDR", default_value = "127.0.0.1:9464")]
    admin: String,
}

impl AdminTarget {
    fn url(&self, path: &str) -> String {
        let base = self.admin.trim_end_matches('/');
        if base.starts_with("http://") || base.starts_with("https://") {
            format!("{base}{path}")
        } else {
            format!("http://{base}{path}")
        }
    }
}

/// Arguments of `sluice plugins`.
#[derive(Debug, Args)]
pub struct PluginsArgs {
    #[command(flatten)]
    target: AdminTarget,
    /// Print the JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// A breaker action.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BreakerAction {
    /// Stop the plugin's events (JetStream: they wait; core: DLQ or shed).
    Open,
    /// Let every event through, whatever the failures.
    Close,
    /// Follow the breaker policy again.
    Auto,
}

/// Arguments of `sluice breaker`.
#[derive(Debug, Args)]
pub struct BreakerArgs {
    /// The plugin.
    plugin: String,
    /// What to do.
    action: BreakerAction,
    #[command(flatten)]
    target: AdminTarget,
}

async fn request(url: String, post: bool) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let response = if post {
            ureq::post(&url).send_empty()
        } else {
            ureq::get(&url).call()
        };
        let mut response = response.with_context(|| {
            format!("{url}: no answer from the host's admin endpoint (is the host running with admin_addr set? pass --admin IP:PORT)")
        })?;
        response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("{url}: unreadable answer"))
    })
    .await?
}

pub async fn plugins(args: PluginsArgs) -> anyhow::Result<ExitCode> {
    let body = request(args.target.url("/plugins"), false).await?;
    if args.json {
        print!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let doc: serde_json::Value =
        serde_json::from_str(&body).context("the /plugins answer is not JSON")?;
    let Some(plugins) = doc.as_array() else {
        bail!("the /plugins answer is not a list");
    };
    println!(
        "{:<20} {:<13} {:<9} {:<10} {:<10} {:<25} {:<30} ERROR",
        "NAME", "VERSION", "STATE", "MODE", "BREAKER", "LOADED", "SUBJECTS"
    );
    for p in plugins {
        let text = |key: &str| {
            p.get(key)
                .and_then(|v| v.as_str())
                .unwrap_or("-")
                .to_string()
        };
        let subjects: Vec<String> = p
            .get("subjects")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut state = text("state");
        if let Some(draining) = p
            .get("draining")
            .and_then(|v| v.as_array())
            .filter(|d| !d.is_empty())
        {
            state = format!("{state} (+{} draining)", draining.len());
        }
        println!(
            "{:<20} {:<13} {:<9} {:<10} {:<10} {:<25} {:<30} {}",
            text("name"),
            text("version"),
            state,
            text("mode"),
            text("breaker"),
            text("loaded_at"),
            subjects.join(","),
            p.get("error").and_then(|v| v.as_str()).unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn breaker(args: BreakerArgs) -> anyhow::Result<ExitCode> {
    let action = match args.action {
        BreakerAction::Open => "open",
        BreakerAction::Close => "close",
        BreakerAction::Auto => "auto",
    };
    let path = format!("/plugins/{}/breaker/{action}", args.plugin);
    let body = request(args.target.url(&path), true).await?;
    print!("{body}");
    Ok(ExitCode::SUCCESS)
}
