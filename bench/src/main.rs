//! `sluice-bench [SCENARIO...]`: run benchmark scenarios (default `all`),
//! print a markdown table and write results.json + results.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sluice_bench::report::{Machine, Report};
use sluice_bench::scenarios::{self, Options};

/// Benchmark the sluice host against plain async-nats consumers.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Scenarios to run (`all`, or any of: floor core-noop core-realistic
    /// js-noop js-realistic dedup plugins-1 plugins-10 plugins-100
    /// reload-small reload-2mb cold-start neighbours polyglot default-path
    /// core-default).
    #[arg(default_value = "all")]
    scenarios: Vec<String>,
    /// Events per throughput run.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Offered rate of the latency runs (events/s).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// A second, lower offered rate for latency below saturation (0: skip).
    #[arg(long, default_value_t = 2_000)]
    low_rate: u64,
    /// Seconds per latency run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Core throughput: most events published ahead of completion.
    #[arg(long, default_value_t = 20_000)]
    window: u64,
    /// Hot reloads per reload scenario.
    #[arg(long, default_value_t = 5)]
    reloads: usize,
    /// Manifest text (top-level TOML keys) that selects the faster isolation
    /// mode; adds a variant to the throughput and latency scenarios. An
    /// empty value measures fresh instances only.
    #[arg(long, default_value = "isolation = \"reuse\"")]
    fast_isolation: String,
    /// Manifest text added to every plugin of every sluice variant.
    #[arg(long, default_value = "")]
    manifest_extra: String,
    /// Host config-file text added to every host (e.g. 'max_concurrency = 64').
    #[arg(long, default_value = "")]
    config_extra: String,
    /// Every host's `log` filter; `info` is what a host runs with by default
    /// (every line logged while an event is handled names the event; the
    /// measured path is the host's default one).
    #[arg(long, default_value = "info")]
    host_log: String,
    /// Output folder (results.json, results.md, host.log).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rounds of the default-path and core-default throughput rows, run
    /// interleaved (baseline, then each variant, again); each row reports
    /// its median, so a noisy neighbour during one run does not decide a bar.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Small sizes for a fast check (2,000 events, 1 s latency runs, 1 reload).
    #[arg(long)]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| sluice_e2e::repo_root().join("target/bench"));
    std::fs::create_dir_all(&out)?;
    let mut opts = Options {
        events: args.events,
        rate: args.rate,
        low_rate: args.low_rate,
        duration: Duration::from_secs(args.duration),
        window: args.window,
        reloads: args.reloads,
        fast_isolation: Some(args.fast_isolation.clone()).filter(|f| !f.trim().is_empty()),
        manifest_extra: args.manifest_extra.clone(),
        config_extra: args.config_extra.clone(),
        host_log: args.host_log.clone(),
        out_dir: out.clone(),
        floor_calls: (5, 2_000),
        rounds: args.rounds.max(1),
    };
    if args.quick {
        opts.events = 2_000;
        opts.duration = Duration::from_secs(1);
        opts.reloads = 1;
        opts.floor_calls = (3, 200);
        opts.rounds = 1;
    }
    let names: Vec<String> = if args.scenarios.iter().any(|s| s == "all") {
        scenarios::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    for n in &names {
        anyhow::ensure!(
            scenarios::ALL.contains(&n.as_str()),
            "unknown scenario `{n}`; known: all {}",
            scenarios::ALL.join(" ")
        );
    }
    // Build the plugins and locate the host before timing anything.
    sluice_e2e::built_plugins();
    sluice_bench::host::host_bin()?;

    let mut settings = BTreeMap::new();
    settings.insert("events".into(), opts.events.to_string());
    settings.insert("rate".into(), opts.rate.to_string());
    settings.insert("low_rate".into(), opts.low_rate.to_string());
    settings.insert("latency_secs".into(), opts.duration.as_secs().to_string());
    settings.insert("window".into(), opts.window.to_string());
    settings.insert("reloads".into(), opts.reloads.to_string());
    settings.insert("rounds".into(), opts.rounds.to_string());
    settings.insert(
        "profile".into(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
    );
    if let Some(f) = &opts.fast_isolation {
        settings.insert("fast_isolation".into(), f.clone());
    }
    let mut report = Report {
        machine: Machine::detect(),
        git_commit: git_commit(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        settings,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for name in &names {
        eprintln!("== {name}: {}", scenarios::describe(name));
        let result = rt.block_on(scenarios::run(name, &opts));
        if let Some(e) = &result.error {
            eprintln!("   error: {e}");
        }
        for r in &result.rows {
            eprintln!(
                "   {} -> {}",
                r.variant,
                serde_json::to_string(r).unwrap_or_default()
            );
        }
        report.scenarios.push(result);
        // Write after every scenario, so an interrupted run keeps what it measured.
        report.bars = sluice_bench::bars::judge(&report.scenarios, opts.rate);
        std::fs::write(
            out.join("results.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(out.join("results.md"), report.markdown())?;
    }
    println!("{}", report.markdown());
    eprintln!(
        "wrote {} and results.md",
        out.join("results.json").display()
    );
    Ok(())
}

fn git_commit() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(sluice_e2e::repo_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    }
}
