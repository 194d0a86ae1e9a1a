//! The scenarios. Each one starts its own nats-server, runs the native
//! baseline and the sluice variants one after the other against it (never at
//! the same time), and returns one [`ScenarioResult`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use sluice_e2e::{NatsServer, PluginDir};

use crate::baseline::{self, Job, Source};
use crate::host::{HostConfig, HostProcess};
use crate::load::{self, Clock, Collector};
use crate::report::{Row, ScenarioResult};
use crate::stats;

/// Every scenario name, in the order `all` runs them.
pub const ALL: &[&str] = &[
    "floor",
    "core-noop",
    "core-realistic",
    "js-noop",
    "js-realistic",
    "dedup",
    "plugins-1",
    "plugins-10",
    "plugins-100",
    "reload-small",
    "reload-2mb",
    "cold-start",
    "neighbours",
    "polyglot",
    "default-path",
    "core-default",
];

/// Run parameters.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events per throughput run.
    pub events: u64,
    /// Offered rate of the latency runs, events/s (the fixed rate).
    pub rate: u64,
    /// A second, lower offered rate (0: none), to show latency below saturation.
    pub low_rate: u64,
    /// Length of a latency run.
    pub duration: Duration,
    /// Most events published ahead of completion in core throughput runs.
    pub window: u64,
    /// Hot reloads per reload scenario.
    pub reloads: usize,
    /// Manifest text (top-level keys) that selects the faster isolation
    /// mode; when set, throughput scenarios add a variant with it.
    pub fast_isolation: Option<String>,
    /// Manifest text added to every sluice plugin (pass-through knobs).
    pub manifest_extra: String,
    /// Host config text added to every host (pass-through knobs).
    pub config_extra: String,
    /// Every host's `log` filter.
    pub host_log: String,
    /// Where host logs go.
    pub out_dir: PathBuf,
    /// In-process floor: rounds × calls per round.
    pub floor_calls: (usize, usize),
    /// Interleaved rounds of the default-path and core-default throughput
    /// rows; each row is the median round.
    pub rounds: usize,
}

/// Run scenario `name`.
pub async fn run(name: &str, opts: &Options) -> ScenarioResult {
    let mut result = ScenarioResult {
        name: name.to_string(),
        description: describe(name).to_string(),
        ..Default::default()
    };
    let outcome = match name {
        "floor" => floor(opts, &mut result).await,
        "core-noop" => core_throughput(opts, &mut result, Job::Noop).await,
        "core-realistic" => realistic(opts, &mut result, false).await,
        "js-noop" => js_throughput(opts, &mut result, Job::Noop).await,
        "js-realistic" => realistic(opts, &mut result, true).await,
        "dedup" => dedup(opts, &mut result).await,
        "plugins-1" => plugins(opts, &mut result, 1).await,
        "plugins-10" => plugins(opts, &mut result, 10).await,
        "plugins-100" => plugins(opts, &mut result, 100).await,
        "reload-small" => reload(opts, &mut result, "enrich").await,
        "reload-2mb" => reload(opts, &mut result, "bigtable").await,
        "cold-start" => cold_start(opts, &mut result).await,
        "neighbours" => neighbours(opts, &mut result).await,
        "polyglot" => polyglot(opts, &mut result).await,
        "default-path" => default_path(opts, &mut result).await,
        "core-default" => core_default(opts, &mut result).await,
        other => Err(anyhow::anyhow!("unknown scenario `{other}`")),
    };
    if let Err(e) = outcome {
        result.error = Some(format!("{e:#}"));
    }
    result.fill_ratios();
    result
}

/// One line on what a scenario measures.
pub fn describe(name: &str) -> &'static str {
    match name {
        "floor" => {
            "in-process: bare wasmtime instantiate+call of the noop component vs sluice's per-event invoke (fresh instance)"
        }
        "core-noop" => "core NATS throughput, no-op job: native subscriber vs sluice + noop plugin",
        "core-realistic" => {
            "core NATS, parse JSON + enrich + publish one derived event: throughput, and publish->derived latency at the fixed rate"
        }
        "js-noop" => {
            "JetStream throughput from a preloaded stream, no-op job: native pull + explicit ack vs sluice + noop plugin"
        }
        "js-realistic" => {
            "JetStream, enrich + confirmed derived publish, then ack: throughput, and publish->derived latency at the fixed rate"
        }
        "dedup" => "idempotency store (NATS KV) on vs off, no-op plugin, core and JetStream",
        "plugins-1" | "plugins-10" | "plugins-100" => {
            "N no-op plugins loaded, one subject each, events spread round-robin: throughput, start time, RSS"
        }
        "reload-small" => {
            "hot reload of plugins/enrich (~100 KB): new file renamed into place -> first event served by the new version"
        }
        "reload-2mb" => {
            "hot reload of plugins/bigtable (~2.6 MB): new file renamed into place -> first event served by the new version"
        }
        "cold-start" => {
            "spawn `sluice run` -> first event handled, compile cache off / empty / warm, small and 2.6 MB plugins"
        }
        "neighbours" => {
            "in-process host: a healthy noop plugin's throughput alone vs beside plugins/hostile, for each misbehaviour"
        }
        "polyglot" => {
            "the no-op plugin in Rust, Python (componentize-py) and JavaScript (componentize-js): in-process µs per fresh and warm call, compile time cold and cached, MiB per live instance; then JetStream no-op throughput and host RSS, fresh and reuse"
        }
        "default-path" => {
            "issue 16's table, JetStream no-op from a preloaded stream: native pull + ack, FastStream (Python), and sluice default (fresh instance, KV dedup), fresh without dedup, reuse with and without KV dedup"
        }
        "core-default" => {
            "issue 16's core bar: core no-op throughput with isolation = \"reuse\" vs the native subscriber, and publish->republished latency (plugins/mirror vs a native republisher) at the fixed rate"
        }
        _ => "",
    }
}

/// A plugin manifest for the benchmarks.
pub fn manifest(
    subjects: &[String],
    publish: &[&str],
    jetstream: Option<&str>,
    dedup: bool,
    extra: &[&str],
) -> String {
    let list = |items: Vec<String>| {
        items
            .iter()
            .map(|s| crate::host::toml_str(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        "subjects = [{}]\npublish = [{}]\n",
        list(subjects.to_vec()),
        list(publish.iter().map(|s| s.to_string()).collect())
    );
    if jetstream.is_some() {
        text.push_str("mode = \"jetstream\"\n");
    }
    for e in extra.iter().filter(|e| !e.trim().is_empty()) {
        text.push_str(e.trim());
        text.push('\n');
    }
    if let Some(stream) = jetstream {
        text.push_str(&format!("\n[jetstream]\nstream = \"{stream}\"\n"));
    }
    text.push_str(&format!("\n[idempotency]\ndedup = {dedup}\n"));
    text
}

/// A sluice variant of a throughput scenario.
struct Variant {
    label: String,
    extra: Vec<String>,
    dedup: bool,
}

fn variants(opts: &Options, plugin: &str, dedup: bool) -> Vec<Variant> {
    let mut out = vec![Variant {
        label: format!("sluice {plugin} (fresh instance per event)"),
        extra: vec![opts.manifest_extra.clone()],
        dedup,
    }];
    if let Some(fast) = &opts.fast_isolation {
        out.push(Variant {
            label: format!(
                "sluice {plugin} (fast isolation: {})",
                fast.replace('\n', "; ")
            ),
            extra: vec![opts.manifest_extra.clone(), fast.clone()],
            dedup,
        });
    }
    out
}

fn host_config(
    nats: &NatsServer,
    dir: &Path,
    opts: &Options,
    cache: Option<PathBuf>,
) -> HostConfig {
    HostConfig {
        nats_url: nats.url(),
        plugins: dir.to_path_buf(),
        compile_cache: cache,
        extra: opts.config_extra.clone(),
        log: opts.host_log.clone(),
    }
}

/// A host serving `dir` with a fresh compile cache, ready: (host, its cache
/// folder, spawn -> ready time).
async fn ready_host(
    nats: &NatsServer,
    dir: &Path,
    opts: &Options,
    timeout: Duration,
) -> anyhow::Result<(HostProcess, tempfile::TempDir, Duration)> {
    let cache = tempfile::tempdir()?;
    let mut host = HostProcess::spawn(
        &host_config(nats, dir, opts, Some(cache.path().into())),
        &log_path(opts),
    )?;
    let ready = host.wait_ready(timeout).await?;
    Ok((host, cache, ready))
}

fn log_path(opts: &Options) -> PathBuf {
    opts.out_dir.join("host.log")
}

fn note_rss(row: &mut Row, host: &HostProcess) {
    if let Some((rss, hwm)) = host.rss_mb() {
        row.rss_mb = Some(rss);
        row.peak_rss_mb = Some(hwm);
    }
}

async fn note_counters(row: &mut Row, host: &HostProcess) {
    if let Ok(m) = host.metrics().await {
        use crate::host::counter_sum;
        for (key, name) in [
            ("core_dropped", "sluice_core_dropped_total"),
            ("dedup_hits", "sluice_dedup_hits_total"),
            ("retries", "sluice_retries_total"),
            ("dead_lettered", "sluice_dead_lettered_total"),
        ] {
            let v = counter_sum(&m, name, None);
            if v > 0 {
                row.extra.insert(key.into(), v as f64);
            }
        }
        let failed = counter_sum(&m, "sluice_events_handled_total", None)
            - counter_sum(&m, "sluice_events_handled_total", Some("ok"));
        if failed > 0 {
            row.extra.insert("failed_attempts".into(), failed as f64);
        }
    }
}

// ---------------------------------------------------------------- neighbours

/// Issue 5's isolation figure: the neighbour's throughput beside each
/// misbehaviour over its throughput alone (sluice_e2e::neighbours).
async fn neighbours(opts: &Options, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let n = (opts.events / 20).clamp(400, 20_000);
    let phases = sluice_e2e::neighbours::run_phases(n, 1, 0.8).await;
    for phase in &phases {
        let mut row = Row::new(format!("noop beside hostile `{}`", phase.mode));
        row.events_per_s = Some(phase.beside.per_second);
        row.ratio_vs_baseline = Some(phase.ratio());
        row.extra
            .insert("alone_per_s".into(), phase.alone.per_second);
        row.extra.insert("cpu_ratio".into(), phase.cpu_ratio());
        result.rows.push(row);
    }
    result.notes.push(format!(
        "{n} neighbour events per sample, alone then beside, back to back; a misbehaviour below 80% is measured up to twice more and the best kept; × baseline = beside / alone"
    ));
    Ok(())
}

// ---------------------------------------------------------------- floor

async fn floor(opts: &Options, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let wasm = std::fs::read(sluice_e2e::plugin_wasm("noop"))?;
    let floor = crate::inproc::Floor::new(&wasm, &[])?;
    let (rounds, per_round) = opts.floor_calls;
    let (bare, sluice, warm) = crate::inproc::measure(&floor, rounds, per_round).await?;
    let mut row = Row::new("bare wasmtime: InstancePre instantiate + call handle (noop)");
    row.millis = Some(bare / 1000.0);
    row.events_per_s = Some(1e6 / bare);
    row.extra.insert("us_per_call".into(), bare);
    result.rows.push(row);
    let mut row = Row::new("sluice engine::invoke (fresh instance, noop)");
    row.millis = Some(sluice / 1000.0);
    row.events_per_s = Some(1e6 / sluice);
    row.extra.insert("us_per_call".into(), sluice);
    row.extra.insert("ratio_vs_bare".into(), sluice / bare);
    result.rows.push(row);
    let mut row =
        Row::new("sluice engine::invoke_reusing (warm instance, isolation = \"reuse\", noop)");
    row.millis = Some(warm / 1000.0);
    row.events_per_s = Some(1e6 / warm);
    row.extra.insert("us_per_call".into(), warm);
    row.extra.insert("ratio_vs_bare".into(), warm / bare);
    result.rows.push(row);
    result.notes.push(format!(
        "single task, sequential calls, median of {rounds} interleaved rounds × {per_round} calls; sluice/bare = {:.2}x",
        sluice / bare
    ));
    Ok(())
}

// ---------------------------------------------------------------- core

/// Publish `n` events (windowed) to `subjects` and time until `progress`
/// reaches `n`: events/s measured from the first publish.
async fn core_run(
    client: &async_nats::Client,
    subjects: &[String],
    n: u64,
    window: u64,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let publisher = {
        let (client, subjects, progress) = (client.clone(), subjects.to_vec(), progress.clone());
        tokio::spawn(async move {
            load::publish_windowed(&client, &subjects, n, window, &progress, Clock::new()).await
        })
    };
    let (_, done, _) = load::wait_progress(&progress, n, Duration::from_secs(10)).await?;
    publisher.await??;
    stats::rate(n, done.duration_since(start).as_secs_f64()).context("empty run")
}

async fn core_baseline(
    nats: &NatsServer,
    client: &async_nats::Client,
    opts: &Options,
    subjects: &[String],
    job: Job,
) -> anyhow::Result<Row> {
    let native = baseline::spawn(&nats.url(), Source::Core(subjects.to_vec()), job)?;
    let rate = core_run(
        client,
        subjects,
        opts.events,
        opts.window,
        native.progress.clone(),
    )
    .await;
    native.stop()?;
    let mut row = Row::new(match job {
        Job::Noop => "baseline: async-nats subscribe (no-op)",
        Job::Enrich => "baseline: async-nats subscribe + enrich + publish",
        Job::Mirror => "baseline: async-nats subscribe + republish unchanged",
    });
    row.events_per_s = Some(rate?);
    Ok(row)
}

#[allow(clippy::too_many_arguments)]
async fn core_sluice(
    nats: &NatsServer,
    client: &async_nats::Client,
    opts: &Options,
    subjects: &[String],
    plugin_crate: &str,
    publish: &[&str],
    variant: &Variant,
) -> anyhow::Result<Row> {
    let dir = PluginDir::new();
    let extra: Vec<&str> = variant.extra.iter().map(String::as_str).collect();
    dir.add(
        "bench",
        plugin_crate,
        &manifest(subjects, publish, None, variant.dedup, &extra),
    );
    let (host, _cache, ready) = ready_host(nats, dir.path(), opts, Duration::from_secs(60)).await?;
    let (progress, stop) = host.poll_handled(Duration::from_millis(10));
    let rate = core_run(client, subjects, opts.events, opts.window, progress)
        .await
        .with_context(|| variant.label.clone());
    stop.store(true, Ordering::Relaxed);
    let mut row = Row::new(variant.label.clone());
    row.events_per_s = Some(rate?);
    row.extra
        .insert("start_to_ready_ms".into(), ready.as_secs_f64() * 1e3);
    note_rss(&mut row, &host);
    note_counters(&mut row, &host).await;
    Ok(row)
}

async fn core_throughput(
    opts: &Options,
    result: &mut ScenarioResult,
    job: Job,
) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let client = nats.client().await;
    result
        .rows
        .push(core_baseline(&nats, &client, opts, &["base.orders".into()], job).await?);
    for v in variants(opts, "noop", false) {
        result.rows.push(
            core_sluice(
                &nats,
                &client,
                opts,
                &["bench.orders".into()],
                "noop",
                &[],
                &v,
            )
            .await?,
        );
    }
    result.notes.push(format!(
        "{} events, at most {} ahead of completion; dedup off; events/s from the first publish to the last event handled (host: admin /metrics polled every 10 ms)",
        opts.events, opts.window
    ));
    Ok(())
}

// ---------------------------------------------------------------- JetStream

async fn js_setup(js: &async_nats::jetstream::Context) {
    sluice_e2e::create_stream(js, "BASE", &["base.orders"]).await;
    sluice_e2e::create_stream(js, "BENCH", &["bench.orders"]).await;
    sluice_e2e::create_stream(js, "DERIVED", &["base.enriched.>", "bench.enriched.>"]).await;
}

async fn purge(js: &async_nats::jetstream::Context, stream: &str) -> anyhow::Result<()> {
    js.get_stream(stream).await?.purge().await?;
    Ok(())
}

async fn js_baseline(
    nats: &NatsServer,
    js: &async_nats::jetstream::Context,
    opts: &Options,
    job: Job,
) -> anyhow::Result<Row> {
    purge(js, "BASE").await?;
    load::preload_stream(js, &["base.orders".into()], opts.events).await?;
    let concurrency = if job == Job::Noop { 1 } else { 32 };
    let native = baseline::spawn(
        &nats.url(),
        Source::JetStream {
            stream: "BASE".into(),
            durable: format!("base-{}", std::process::id()),
            concurrency,
        },
        job,
    )?;
    let (t0, t1, c0) =
        load::wait_progress(&native.progress, opts.events, Duration::from_secs(10)).await?;
    native.stop()?;
    let mut row = Row::new(match job {
        Job::Noop | Job::Mirror => "baseline: async-nats pull consumer + explicit ack (no-op)",
        Job::Enrich => {
            "baseline: async-nats pull + enrich + confirmed publish + ack (32 in flight)"
        }
    });
    row.events_per_s = stats::rate(opts.events - c0, t1.duration_since(t0).as_secs_f64());
    Ok(row)
}

async fn js_sluice(
    nats: &NatsServer,
    js: &async_nats::jetstream::Context,
    opts: &Options,
    plugin_crate: &str,
    publish: &[&str],
    variant: &Variant,
) -> anyhow::Result<Row> {
    let wasm = sluice_e2e::plugin_wasm(plugin_crate);
    js_sluice_wasm(nats, js, opts, &wasm, publish, variant).await
}

/// [`js_sluice`] for the component at `wasm`.
async fn js_sluice_wasm(
    nats: &NatsServer,
    js: &async_nats::jetstream::Context,
    opts: &Options,
    wasm: &Path,
    publish: &[&str],
    variant: &Variant,
) -> anyhow::Result<Row> {
    purge(js, "BENCH").await?;
    load::preload_stream(js, &["bench.orders".into()], opts.events).await?;
    let dir = PluginDir::new();
    let extra: Vec<&str> = variant.extra.iter().map(String::as_str).collect();
    // A fresh durable per variant, so each starts at the stream's first message.
    let name = format!("bench{}", sluice_e2e::free_port());
    dir.add_file(
        &name,
        wasm,
        &manifest(
            &["bench.orders".into()],
            publish,
            Some("BENCH"),
            variant.dedup,
            &extra,
        ),
    );
    let (host, _cache, _) = ready_host(nats, dir.path(), opts, Duration::from_secs(60)).await?;
    let (progress, stop) = host.poll_handled(Duration::from_millis(10));
    let measured = load::wait_progress(&progress, opts.events, Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let (t0, t1, c0) = measured?;
    let mut row = Row::new(variant.label.clone());
    row.events_per_s = stats::rate(opts.events - c0, t1.duration_since(t0).as_secs_f64());
    note_rss(&mut row, &host);
    note_counters(&mut row, &host).await;
    let (pending, ack_pending) =
        sluice_e2e::consumer_backlog(js, "BENCH", &format!("sluice-{name}")).await;
    if pending + ack_pending as u64 > 0 {
        row.extra.insert(
            "backlog_after".into(),
            (pending + ack_pending as u64) as f64,
        );
    }
    Ok(row)
}

async fn js_throughput(
    opts: &Options,
    result: &mut ScenarioResult,
    job: Job,
) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    js_setup(&js).await;
    result.rows.push(js_baseline(&nats, &js, opts, job).await?);
    for v in variants(opts, "noop", false) {
        result
            .rows
            .push(js_sluice(&nats, &js, opts, "noop", &[], &v).await?);
    }
    result.notes.push(format!(
        "{} events preloaded into a file-backed stream, then consumed; dedup off; events/s from the first to the last handled event",
        opts.events
    ));
    Ok(())
}

// ---------------------------------------------------------------- languages

/// The no-op plugin in each guest language: (label, component path).
fn noop_per_language() -> Vec<(&'static str, PathBuf)> {
    use sluice_e2e::polyglot::polyglot_wasm;
    vec![
        ("Rust", sluice_e2e::plugin_wasm("noop")),
        ("Python", polyglot_wasm("noop-py")),
        ("JavaScript", polyglot_wasm("noop-js")),
    ]
}

async fn polyglot(opts: &Options, result: &mut ScenarioResult) -> anyhow::Result<()> {
    const LIVE: usize = 32;
    let (rounds, per_round) = opts.floor_calls;
    let plugins = noop_per_language();
    for (lang, path) in &plugins {
        let wasm = std::fs::read(path)?;
        let cost = crate::inproc::component_cost(&wasm, LIVE).await?;
        let floor = crate::inproc::Floor::new(&wasm, &[])?;
        let (_, fresh, warm) = crate::inproc::measure(&floor, rounds, per_round).await?;
        drop(floor);
        let mut row = Row::new(format!(
            "{lang} noop, in-process: engine::invoke, fresh instance ({:.1} MB component)",
            wasm.len() as f64 / 1e6
        ));
        row.millis = Some(fresh / 1000.0);
        row.events_per_s = Some(1e6 / fresh);
        row.extra.insert("us_per_call".into(), fresh);
        row.extra
            .insert("compile_cold_ms".into(), cost.compile_cold_ms);
        row.extra
            .insert("compile_cached_ms".into(), cost.compile_cached_ms);
        row.extra
            .insert("rss_mb_per_live_instance".into(), cost.rss_per_instance_mb);
        result.rows.push(row);
        let mut row = Row::new(format!(
            "{lang} noop, in-process: engine::invoke_reusing, warm instance"
        ));
        row.millis = Some(warm / 1000.0);
        row.events_per_s = Some(1e6 / warm);
        row.extra.insert("us_per_call".into(), warm);
        result.rows.push(row);
        let mut row = Row::new(format!(
            "{lang} noop: compile, cold / from the compile cache"
        ));
        row.millis = Some(cost.compile_cold_ms);
        row.extra
            .insert("compile_cached_ms".into(), cost.compile_cached_ms);
        result.rows.push(row);
        let mut row = Row::new(format!(
            "{lang} noop: host memory per live instance ({LIVE} held at once), MiB in the RSS column"
        ));
        row.rss_mb = Some(cost.rss_per_instance_mb);
        result.rows.push(row);
    }
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    js_setup(&js).await;
    for (lang, path) in &plugins {
        for v in variants(opts, &format!("{lang} noop"), false) {
            result
                .rows
                .push(js_sluice_wasm(&nats, &js, opts, path, &[], &v).await?);
        }
    }
    result.notes.push(format!(
        "in-process rows: single task, median of {rounds} rounds × {per_round} calls, default engine settings; memory: VmRSS growth with {LIVE} instances alive ÷ {LIVE}; JetStream rows as in js-noop ({} events, dedup off)",
        opts.events
    ));
    Ok(())
}

// ---------------------------------------------------------------- realistic + latency

async fn latency_run(
    client: &async_nats::Client,
    opts: &Options,
    rate: u64,
    input: &str,
    derived: &str,
) -> anyhow::Result<stats::LatencySummary> {
    let clock = Clock::new();
    let expected = rate * opts.duration.as_millis() as u64 / 1000;
    let collector =
        Collector::start(client, derived, expected, clock, Duration::from_secs(5)).await?;
    let sent = load::publish_paced(client, input, rate, opts.duration, clock).await?;
    let rec = collector.finish().await?;
    if rec.len() < sent {
        bail!("{} of {sent} derived events arrived", rec.len());
    }
    rec.summary().context("no derived events")
}

async fn realistic(
    opts: &Options,
    result: &mut ScenarioResult,
    jetstream: bool,
) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let publish = ["bench.enriched.>"];
    if jetstream {
        js_setup(&js).await;
        result
            .rows
            .push(js_baseline(&nats, &js, opts, Job::Enrich).await?);
        for v in variants(opts, "enrich", false) {
            result
                .rows
                .push(js_sluice(&nats, &js, opts, "enrich", &publish, &v).await?);
        }
    } else {
        result
            .rows
            .push(core_baseline(&nats, &client, opts, &["base.orders".into()], Job::Enrich).await?);
        for v in variants(opts, "enrich", false) {
            result.rows.push(
                core_sluice(
                    &nats,
                    &client,
                    opts,
                    &["bench.orders".into()],
                    "enrich",
                    &publish,
                    &v,
                )
                .await?,
            );
        }
    }

    // Latency at the fixed offered rate (and the low rate): baseline, then each sluice variant.
    let rates: Vec<u64> = [opts.rate, opts.low_rate]
        .into_iter()
        .filter(|r| *r > 0)
        .collect();
    for &rate in &rates {
        if jetstream {
            purge(&js, "BASE").await?;
        }
        let source = if jetstream {
            Source::JetStream {
                stream: "BASE".into(),
                durable: format!("base-latency-{rate}"),
                concurrency: 32,
            }
        } else {
            Source::Core(vec!["base.orders".into()])
        };
        let native = baseline::spawn(&nats.url(), source, Job::Enrich)?;
        let lat = latency_run(&client, opts, rate, "base.orders", "base.enriched.orders").await;
        native.stop()?;
        let mut row = Row::new(format!("baseline latency @ {rate}/s"));
        row.latency = Some(lat.context("baseline latency")?);
        result.rows.push(row);
    }
    for v in variants(opts, "enrich", false) {
        let dir = PluginDir::new();
        let extra: Vec<&str> = v.extra.iter().map(String::as_str).collect();
        let subjects = ["bench.orders".to_string()];
        dir.add(
            "latency",
            "enrich",
            &manifest(
                &subjects,
                &publish,
                jetstream.then_some("BENCH"),
                v.dedup,
                &extra,
            ),
        );
        for &rate in &rates {
            if jetstream {
                purge(&js, "BENCH").await?;
            }
            // A fresh host per rate, so a saturated run leaves no backlog behind.
            let (host, _cache, _) =
                ready_host(&nats, dir.path(), opts, Duration::from_secs(60)).await?;
            let lat =
                latency_run(&client, opts, rate, "bench.orders", "bench.enriched.orders").await;
            let mut row = Row::new(format!("{} latency @ {rate}/s", v.label));
            row.latency = Some(lat.with_context(|| row.variant.clone())?);
            note_rss(&mut row, &host);
            note_counters(&mut row, &host).await;
            result.rows.push(row);
        }
    }
    let rate = rates
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(" and ");
    result.notes.push(format!(
        "latency = publish (stamp taken just before the client publish call) -> derived event received by a core subscriber in the harness, i.e. one extra NATS hop after the handler; {rate}/s offered for {:?} in 1 ms bursts{}",
        opts.duration,
        if jetstream { "; the derived publish is confirmed by JetStream (stream DERIVED) before the ack, for both" } else { "" }
    ));
    Ok(())
}

// ---------------------------------------------------------------- dedup

async fn dedup(opts: &Options, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    js_setup(&js).await;
    for on in [false, true] {
        let mut v = variants(opts, "noop", on).remove(0);
        v.label = format!(
            "sluice core noop, dedup {}",
            if on { "on (KV)" } else { "off" }
        );
        result.rows.push(
            core_sluice(
                &nats,
                &client,
                opts,
                &["bench.orders".into()],
                "noop",
                &[],
                &v,
            )
            .await?,
        );
    }
    for on in [false, true] {
        let mut v = variants(opts, "noop", on).remove(0);
        v.label = format!(
            "sluice JetStream noop, dedup {}",
            if on { "on (KV)" } else { "off" }
        );
        result
            .rows
            .push(js_sluice(&nats, &js, opts, "noop", &[], &v).await?);
    }
    result.notes.push("ratios are not filled: compare the on/off rows of one mode; the baselines are in core-noop and js-noop".into());
    Ok(())
}

// ---------------------------------------------------------------- issue 16

/// The sluice rows of issue 16's table: (label, manifest text, dedup).
const DEFAULT_PATH_VARIANTS: &[(&str, &str, bool)] = &[
    ("sluice default (fresh instance, KV dedup)", "", true),
    ("sluice fresh instance, dedup off", "", false),
    (
        "sluice isolation = \"reuse\", KV dedup",
        "isolation = \"reuse\"",
        true,
    ),
    (
        "sluice isolation = \"reuse\", dedup off",
        "isolation = \"reuse\"",
        false,
    ),
];

/// Label of the FastStream row.
pub const FASTSTREAM_ROW: &str = "peer: FastStream (Python) pull consumer + ack each";

async fn default_path(opts: &Options, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    js_setup(&js).await;
    let mut rounds = Rounds::default();
    for _ in 0..opts.rounds {
        rounds.add(js_baseline(&nats, &js, opts, Job::Noop).await?);
        for (label, extra, dedup) in DEFAULT_PATH_VARIANTS {
            let v = Variant {
                label: label.to_string(),
                extra: vec![opts.manifest_extra.clone(), extra.to_string()],
                dedup: *dedup,
            };
            rounds.add(js_sluice(&nats, &js, opts, "noop", &[], &v).await?);
        }
    }
    let mut rows = rounds.medians(result);
    // The peer runs once: it is two orders of magnitude below every row.
    match faststream_row(&nats, &js, opts).await {
        Ok(row) => rows.insert(1, row),
        Err(e) => result.notes.push(format!("FastStream peer skipped: {e:#}")),
    }
    result.rows.extend(rows);
    result.notes.push(format!(
        "{} events of ~190 B preloaded into a file-backed stream for each row, then consumed by a fresh durable; events/s from the first to the last acknowledged (sluice: handled) event; FastStream {} pulls {} per request, acks each message after its handler ({})",
        opts.events,
        crate::faststream::VERSION,
        crate::faststream::BATCH,
        "bench/faststream/consumer.py"
    ));
    Ok(())
}

/// FastStream on the BASE stream, preloaded afresh.
async fn faststream_row(
    nats: &NatsServer,
    js: &async_nats::jetstream::Context,
    opts: &Options,
) -> anyhow::Result<Row> {
    let python = crate::faststream::install()?;
    purge(js, "BASE").await?;
    load::preload_stream(js, &["base.orders".into()], opts.events).await?;
    let peer = crate::faststream::Peer::spawn(
        &python,
        &nats.url(),
        "BASE",
        "base.orders",
        &format!("faststream-{}", std::process::id()),
    )?;
    let (t0, t1, c0) =
        load::wait_progress(&peer.progress, opts.events, Duration::from_secs(10)).await?;
    drop(peer);
    let mut row = Row::new(FASTSTREAM_ROW);
    row.events_per_s = stats::rate(opts.events - c0, t1.duration_since(t0).as_secs_f64());
    Ok(row)
}

async fn core_default(opts: &Options, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let reuse = "isolation = \"reuse\"".to_string();
    let v = Variant {
        label: "sluice noop, isolation = \"reuse\"".into(),
        extra: vec![opts.manifest_extra.clone(), reuse.clone()],
        dedup: true,
    };
    let mut rounds = Rounds::default();
    for _ in 0..opts.rounds {
        rounds.add(core_baseline(&nats, &client, opts, &["base.orders".into()], Job::Noop).await?);
        rounds.add(
            core_sluice(
                &nats,
                &client,
                opts,
                &["bench.orders".into()],
                "noop",
                &[],
                &v,
            )
            .await?,
        );
    }
    let rows = rounds.medians(result);
    result.rows.extend(rows);
    let rates: Vec<u64> = [opts.rate, opts.low_rate]
        .into_iter()
        .filter(|r| *r > 0)
        .collect();
    for &rate in &rates {
        let native = baseline::spawn(
            &nats.url(),
            Source::Core(vec!["base.orders".into()]),
            Job::Mirror,
        )?;
        let lat = latency_run(&client, opts, rate, "base.orders", "mirror.base.orders").await;
        native.stop()?;
        let mut row = Row::new(format!("baseline mirror latency @ {rate}/s"));
        row.latency = Some(lat.context("baseline latency")?);
        result.rows.push(row);
    }
    let dir = PluginDir::new();
    let subjects = ["bench.orders".to_string()];
    let extra = [opts.manifest_extra.as_str(), reuse.as_str()];
    dir.add(
        "latency",
        "mirror",
        &manifest(&subjects, &["mirror.>"], None, true, &extra),
    );
    for &rate in &rates {
        let (host, _cache, _) =
            ready_host(&nats, dir.path(), opts, Duration::from_secs(60)).await?;
        let lat = latency_run(&client, opts, rate, "bench.orders", "mirror.bench.orders").await;
        let mut row = Row::new(format!(
            "sluice mirror, isolation = \"reuse\" latency @ {rate}/s"
        ));
        row.latency = Some(lat.with_context(|| row.variant.clone())?);
        note_rss(&mut row, &host);
        note_counters(&mut row, &host).await;
        result.rows.push(row);
    }
    result.notes.push(format!(
        "throughput: {} core events, at most {} ahead of completion, default key (per message) and dedup setting; latency: plugins/mirror republishes each event unchanged, publish -> republished event received by the harness, {:?} per rate",
        opts.events, opts.window, opts.duration
    ));
    Ok(())
}

// ---------------------------------------------------------------- many plugins

async fn plugins(opts: &Options, result: &mut ScenarioResult, count: usize) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let base: Vec<String> = (0..count).map(|i| format!("base.p{i}")).collect();
    result
        .rows
        .push(core_baseline(&nats, &client, opts, &base, Job::Noop).await?);
    let subjects: Vec<String> = (0..count).map(|i| format!("bench.p{i}")).collect();
    let dir = PluginDir::new();
    let extra = [opts.manifest_extra.as_str()];
    for (i, s) in subjects.iter().enumerate() {
        dir.add(
            &format!("p{i}"),
            "noop",
            &manifest(std::slice::from_ref(s), &[], None, false, &extra),
        );
    }
    let (host, _cache, ready) =
        ready_host(&nats, dir.path(), opts, Duration::from_secs(120)).await?;
    let idle_rss = host.rss_mb();
    let (progress, stop) = host.poll_handled(Duration::from_millis(10));
    let rate = core_run(&client, &subjects, opts.events, opts.window, progress).await;
    stop.store(true, Ordering::Relaxed);
    let mut row = Row::new(format!(
        "sluice {count} noop plugins (fresh instance per event)"
    ));
    row.events_per_s = Some(rate?);
    row.millis = Some(ready.as_secs_f64() * 1e3);
    if let Some((rss, _)) = idle_rss {
        row.extra.insert("idle_rss_mb".into(), rss);
    }
    note_rss(&mut row, &host);
    note_counters(&mut row, &host).await;
    result.rows.push(row);
    result.notes.push(format!(
        "core mode, {count} subjects, events round-robin over them; ms = spawn -> /readyz (empty compile cache, identical components); idle_rss_mb = RSS at ready"
    ));
    Ok(())
}

// ---------------------------------------------------------------- reload

/// Publish one event per millisecond to `subject` until the returned flag is set.
fn trickle(client: &async_nats::Client, subject: &str) -> Arc<std::sync::atomic::AtomicBool> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (client, subject, flag) = (client.clone(), subject.to_string(), stop.clone());
    tokio::spawn(async move {
        let clock = Clock::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut seq = 0;
        while !flag.load(Ordering::Relaxed) {
            tick.tick().await;
            let _ = client
                .publish(subject.clone(), load::payload(seq, clock.now_ns()))
                .await;
            seq += 1;
        }
    });
    stop
}

/// Derived events as (arrival, plugin version header).
async fn versions(
    client: &async_nats::Client,
    subject: &str,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<(Instant, String)>> {
    let mut sub = client.subscribe(subject.to_string()).await?;
    client.flush().await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let version = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Sluice-Plugin-Version"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            if tx.send((Instant::now(), version)).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

async fn first_with(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, String)>,
    version: &str,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((at, v))) if v == version => return Ok(at),
            Ok(Some(_)) => {}
            _ => bail!("no event served by version {version} within {timeout:?}"),
        }
    }
}

/// Write `bytes` next to `target` and rename it into place, as an operator's
/// deploy would (the host never sees a half-written file).
fn deploy(target: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = target.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, target)?;
    Ok(())
}

fn derived_prefix(plugin_crate: &str) -> &'static str {
    if plugin_crate == "bigtable" {
        "scored"
    } else {
        "enriched"
    }
}

async fn reload(
    opts: &Options,
    result: &mut ScenarioResult,
    plugin_crate: &str,
) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let original = std::fs::read(sluice_e2e::plugin_wasm(plugin_crate))?;
    let derived = format!("rl.{}.orders", derived_prefix(plugin_crate));
    let dir = PluginDir::new();
    let extra = [opts.manifest_extra.as_str()];
    dir.add(
        "reload",
        plugin_crate,
        &manifest(&["rl.orders".into()], &["rl.*.orders"], None, false, &extra),
    );
    let (host, _cache, _) = ready_host(&nats, dir.path(), opts, Duration::from_secs(60)).await?;
    let mut rx = versions(&client, &derived).await?;
    let stop = trickle(&client, "rl.orders");
    let outcome = async {
        first_with(
            &mut rx,
            &sluice_e2e::version_of(&original),
            Duration::from_secs(10),
        )
        .await?;
        let mut samples = Vec::new();
        for k in 1..=opts.reloads {
            let bytes = sluice_e2e::variant(&original, 1000 + k as u32);
            let version = sluice_e2e::version_of(&bytes);
            deploy(&dir.path().join("reload.wasm"), &bytes)?;
            let t0 = Instant::now();
            let served = first_with(&mut rx, &version, Duration::from_secs(30)).await?;
            samples.push(served.duration_since(t0).as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        anyhow::Ok(samples)
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let samples = outcome?;
    let mut row = Row::new(format!(
        "sluice reload {plugin_crate} ({:.0} KB), median of {}",
        original.len() as f64 / 1024.0,
        samples.len()
    ));
    row.millis = stats::median(&samples);
    row.extra
        .insert("max_ms".into(), samples.iter().cloned().fold(0.0, f64::max));
    row.extra.insert(
        "min_ms".into(),
        samples.iter().cloned().fold(f64::INFINITY, f64::min),
    );
    row.extra.insert("bytes".into(), original.len() as f64);
    note_rss(&mut row, &host);
    result.rows.push(row);
    result.notes.push(
        "ms = rename of the new .wasm into the watched folder -> first derived event carrying the new Sluice-Plugin-Version (events offered every 1 ms; includes the host's 100 ms debounce and stability check; compile cache on but cold for the new bytes)".into(),
    );
    Ok(())
}

// ---------------------------------------------------------------- cold start

async fn cold_start(opts: &Options, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let client = nats.client().await;
    for plugin_crate in ["enrich", "bigtable"] {
        let derived = format!("cs.{}.orders", derived_prefix(plugin_crate));
        let dir = PluginDir::new();
        let extra = [opts.manifest_extra.as_str()];
        dir.add(
            "cold",
            plugin_crate,
            &manifest(&["cs.orders".into()], &["cs.*.orders"], None, false, &extra),
        );
        let size = std::fs::metadata(sluice_e2e::plugin_wasm(plugin_crate))?.len();
        let cache = tempfile::tempdir()?;
        for (label, cache_dir) in [
            ("compile cache off", None),
            ("compile cache empty", Some(cache.path().to_path_buf())),
            ("compile cache warm", Some(cache.path().to_path_buf())),
        ] {
            let mut rx = versions(&client, &derived).await?;
            let stop = trickle(&client, "cs.orders");
            let host = HostProcess::spawn(
                &host_config(&nats, dir.path(), opts, cache_dir),
                &log_path(opts),
            )?;
            let first = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
            stop.store(true, Ordering::Relaxed);
            let Ok(Some((at, _))) = first else {
                bail!(
                    "{plugin_crate} ({label}): no event handled within 60 s of spawning the host"
                );
            };
            let mut row = Row::new(format!(
                "sluice cold start, {plugin_crate} ({:.0} KB), {label}",
                size as f64 / 1024.0
            ));
            row.millis = Some(at.duration_since(host.spawned).as_secs_f64() * 1e3);
            note_rss(&mut row, &host);
            result.rows.push(row);
            drop(host);
        }
    }
    result.notes.push("ms = spawn of `sluice run` -> first derived event received (events offered every 1 ms, core mode)".into());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_parse_with_the_runtime() {
        let text = manifest(
            &["bench.orders".into()],
            &["bench.enriched.>"],
            Some("BENCH"),
            false,
            &["max_concurrency = 16", ""],
        );
        let m = sluice::manifest::Manifest::parse(&text).unwrap();
        assert_eq!(m.subjects, vec!["bench.orders"]);
        assert_eq!(m.mode, sluice::manifest::DeliveryMode::Jetstream);
        assert_eq!(m.limits.max_concurrency, Some(16));
        assert!(!m.idempotency.dedup);
        let core = manifest(&["a.b".into()], &[], None, true, &[]);
        let m = sluice::manifest::Manifest::parse(&core).unwrap();
        assert_eq!(m.mode, sluice::manifest::DeliveryMode::Core);
        assert!(m.idempotency.dedup);
    }

    #[test]
    fn every_scenario_is_described() {
        for name in ALL {
            assert!(!describe(name).is_empty(), "{name}");
        }
    }
}

/// The throughput rows of interleaved rounds, by variant in first-seen order.
#[derive(Default)]
struct Rounds {
    rows: Vec<Vec<Row>>,
}

impl Rounds {
    fn add(&mut self, row: Row) {
        match self.rows.iter_mut().find(|r| r[0].variant == row.variant) {
            Some(runs) => runs.push(row),
            None => self.rows.push(vec![row]),
        }
    }

    /// Each variant's median round (by events/s), with every round's figure
    /// noted in `result`, so the spread is on record.
    fn medians(self, result: &mut ScenarioResult) -> Vec<Row> {
        let mut medians = Vec::new();
        for mut runs in self.rows {
            runs.sort_by(|a, b| {
                a.events_per_s
                    .partial_cmp(&b.events_per_s)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            if runs.len() > 1 {
                let figures: Vec<String> = runs
                    .iter()
                    .map(|r| r.events_per_s.map_or("-".into(), |e| format!("{e:.0}")))
                    .collect();
                result.notes.push(format!(
                    "{}: {} rounds, events/s {} (median reported)",
                    runs[0].variant,
                    runs.len(),
                    figures.join(" / ")
                ));
            }
            let middle = runs.len() / 2;
            medians.push(runs.swap_remove(middle));
        }
        medians
    }
}
