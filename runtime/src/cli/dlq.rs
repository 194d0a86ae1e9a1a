//! `sluice dlq list|replay|purge`: inspect and operate the dead-letter queue.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};

use crate::dlq::{self, Entry, Filter};

/// Arguments of `sluice dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
    /// TOML config file (for the NATS connection keys and dlq_stream).
    #[arg(long, env = "SLUICE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: super::DlqSettingsArgs,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead-lettered events.
    List {
        #[command(flatten)]
        select: Select,
        /// Print JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Republish entries to their original subject with their original key.
    Replay {
        #[command(flatten)]
        select: Select,
        /// Replay every selected entry (required unless --seq is given).
        #[arg(long, conflicts_with = "seq")]
        all: bool,
        /// At most this many replays per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Show what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete entries for good.
    Purge {
        /// Only this plugin's entries.
        #[arg(long)]
        plugin: Option<String>,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
struct Select {
    /// Only this plugin's entries.
    #[arg(long)]
    plugin: Option<String>,
    /// Only entries that last failed since: a duration ago (e.g. 1h) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only entries whose error class or message contains TEXT.
    #[arg(long, value_name = "TEXT")]
    error: Option<String>,
    /// Only the entry with this DLQ sequence.
    #[arg(long)]
    seq: Option<u64>,
}

impl Select {
    fn filter(&self) -> anyhow::Result<Filter> {
        let since = match &self.since {
            None => None,
            Some(text) => Some(match humantime::parse_duration(text) {
                Ok(ago) => SystemTime::now() - ago,
                Err(_) => humantime::parse_rfc3339_weak(text).with_context(|| {
                    format!("--since `{text}`: use a duration (e.g. 30m, 2h) or an RFC 3339 time")
                })?,
            }),
        };
        Ok(Filter {
            plugin: self.plugin.clone(),
            since,
            error: self.error.clone(),
            seq: self.seq,
        })
    }
}

pub async fn dlq(args: DlqArgs) -> anyhow::Result<ExitCode> {
    let settings = super::settings(args.config.as_deref(), &args.settings.overrides())?;
    let client = crate::nats::connect_once(&settings.nats).await?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = settings.dlq_stream.as_str();
    match args.command {
        DlqCommand::List { select, json } => {
            let entries = dlq::list(&js, stream, &select.filter()?).await?;
            if json {
                let rows: Vec<serde_json::Value> = entries.iter().map(entry_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(&entries);
            }
        }
        DlqCommand::Replay {
            select,
            all,
            rate,
            dry_run,
        } => {
            if select.seq.is_none() && !all {
                bail!(
                    "say which entries to replay: --seq N for one, or --all for every selected entry"
                );
            }
            let entries = dlq::list(&js, stream, &select.filter()?).await?;
            if entries.is_empty() {
                println!("no matching DLQ entries");
                return Ok(ExitCode::SUCCESS);
            }
            let pause = rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r));
            let mut replayed = 0;
            for entry in &entries {
                let l = &entry.letter;
                if dry_run {
                    println!(
                        "would replay seq {} to {} (plugin {}, key {})",
                        entry.seq, l.subject, l.plugin, l.key
                    );
                    continue;
                }
                dlq::replay_one(&client, &js, stream, entry).await?;
                replayed += 1;
                println!(
                    "replayed seq {} to {} (key {})",
                    entry.seq, l.subject, l.key
                );
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
            }
            if !dry_run {
                println!(
                    "{replayed} entr{} replayed and removed from the DLQ",
                    if replayed == 1 { "y" } else { "ies" }
                );
            }
        }
        DlqCommand::Purge { plugin, yes } => {
            let filter = Filter {
                plugin: plugin.clone(),
                ..Filter::default()
            };
            let count = dlq::list(&js, stream, &filter).await?.len();
            if !yes {
                bail!(
                    "refusing to delete {count} DLQ entr{} without --yes",
                    if count == 1 { "y" } else { "ies" }
                );
            }
            let purged = dlq::purge(&js, stream, plugin.as_deref()).await?;
            println!("purged {purged} DLQ entries");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn entry_json(entry: &Entry) -> serde_json::Value {
    let l = &entry.letter;
    let payload = match std::str::from_utf8(&l.payload) {
        Ok(text) => serde_json::json!({ "payload": text }),
        Err(_) => {
            serde_json::json!({ "payload_base64": base64::engine::general_purpose::STANDARD.encode(&l.payload) })
        }
    };
    let mut row = serde_json::json!({
        "seq": entry.seq,
        "plugin": l.plugin,
        "version": l.version,
        "subject": l.subject,
        "headers": l.headers,
        "stream": l.stream,
        "sequence": l.sequence,
        "attempts": l.attempts,
        "error_class": l.error_class,
        "error": l.error,
        "idempotency_key": l.key,
        "first_failure": humantime::format_rfc3339_millis(l.first_failure).to_string(),
        "last_failure": humantime::format_rfc3339_millis(l.last_failure).to_string(),
        "trace_id": l.trace_id,
        "replay": l.replay,
    });
    if let (Some(row), Some(extra)) = (row.as_object_mut(), payload.as_object()) {
        row.extend(extra.clone());
    }
    row
}

fn print_table(entries: &[Entry]) {
    if entries.is_empty() {
        println!("no DLQ entries");
        return;
    }
    println!(
        "{:>6}  {:<24}  {:<16}  {:<12}  {:<28}  {:>3}  {:<18}  ERROR",
        "SEQ", "LAST FAILURE", "PLUGIN", "VERSION", "SUBJECT", "ATT", "CLASS"
    );
    for entry in entries {
        let l = &entry.letter;
        let mut error = l.error.clone();
        if error.chars().count() > 60 {
            error = error.chars().take(59).collect::<String>() + "…";
        }
        println!(
            "{:>6}  {:<24}  {:<16}  {:<12}  {:<28}  {:>3}  {:<18}  {}",
            entry.seq,
            humantime::format_rfc3339_millis(l.last_failure).to_string(),
            l.plugin,
            l.version,
            l.subject,
            l.attempts,
            l.error_class,
            error
        );
    }
    println!(
        "{} entr{}",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" }
    );
}
