//! The running host: connect to NATS, load the plugin folder, subscribe each
//! plugin, dispatch events, follow deploys in the folder, and shut down
//! cleanly.
//!
//! [`start`] returns a [`HostHandle`] at once; connecting, loading and
//! subscribing go on in the background (an unreachable NATS is retried and
//! reported rather than fatal). [`HostHandle::ready`] resolves once every
//! plugin found at start is subscribed. After that the [`Supervisor`] owns
//! every plugin: a changed file is loaded, checked and swapped in atomically
//! (in-flight events finish on the old version, later events go to the new
//! one); a bad new version leaves the old one serving; a removed plugin
//! drains and unsubscribes.
//!
//! Shutdown (the token of [`HostHandle::shutdown_token`], cancelled on
//! SIGTERM/SIGINT by the CLI): stop taking events, let in-flight ones finish
//! for up to `shutdown_grace`, then abandon what still runs (JetStream
//! messages are Nak'ed for redelivery; see `dispatch::jetstream`), flush, stop.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime::component::Linker;

use crate::config::{DedupStoreKind, Settings, apply_retry};
use crate::delivery::breaker::{BreakerPolicy, Forced};
use crate::delivery::dead_letter;
use crate::delivery::dedup::{DedupStore, MemoryStore};
use crate::delivery::dedup_kv;
use crate::dispatch::warm::WarmPool;
use crate::dispatch::{Dispatcher, Route, StatsSnapshot};
use crate::engine::cache::{CompileCache, Provenance};
use crate::engine::governor::GovernorStats;
use crate::engine::invoke::Failure;
use crate::engine::{EngineError, PoolUsage, WasmEngine};
use crate::host::state::StateSpace;
use crate::host::{self, HostState, LogBudget, PluginConfig, PluginTag};
use crate::limits::PluginSandbox;
use crate::manifest::{DeliveryMode, Isolation, JetStreamSettings, Manifest};
use crate::nats;
use crate::registry::{
    self, DirError, LoadedPlugin, PluginStatus, Registry, ReloadCounters, watcher,
};
use crate::telemetry::Metrics;
use crate::telemetry::admin::{self, AdminError, ControlFn, StatusFn};
use crate::telemetry::health::{Health, keep_trying};
use crate::trigger::{self, TriggerContext};

/// Why the host cannot start at all (a single bad plugin is not one of these).
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The linker could not be built (a bug).
    #[error("cannot link host functions: {0:#}")]
    Linker(wasmtime::Error),
    /// The plugin folder cannot be read.
    #[error(transparent)]
    PluginDir(#[from] DirError),
    /// NATS connection gave up (shutdown requested first).
    #[error(transparent)]
    Connect(#[from] nats::ConnectError),
    /// The admin endpoint cannot listen.
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// Why one plugin's subscriptions could not be set up.
#[derive(Debug, Error)]
enum SubscribeError {
    #[error(transparent)]
    Core(#[from] trigger::core::SubscribeError),
    #[error(transparent)]
    JetStream(#[from] crate::nats::jetstream::JetStreamSetupError),
}

/// Control of a running host.
pub struct HostHandle {
    shutdown: CancellationToken,
    ready: watch::Receiver<bool>,
    registry: Arc<Registry>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
    metrics: Metrics,
    admin_addr: Option<SocketAddr>,
    engine: WasmEngine,
    health: Health,
}

impl HostHandle {
    /// Wait until NATS is connected and every plugin found at start is subscribed.
    pub async fn ready(&mut self) -> bool {
        self.ready.wait_for(|r| *r).await.is_ok()
    }

    /// The live not-ready conditions (what `/readyz` lists besides NATS and
    /// the plugins), as "name: reason": for example the dedup store while
    /// its KV bucket is still opening.
    pub fn problems(&self) -> Vec<String> {
        self.health.problems()
    }

    /// Status of every plugin.
    pub fn plugins(&self) -> Vec<PluginStatus> {
        self.registry.statuses()
    }

    /// Counters of a plugin.
    pub fn stats(&self, plugin: &str) -> Option<StatsSnapshot> {
        self.registry.stats(plugin)
    }

    /// The failure of the last event of `plugin` given up on (class and message).
    pub fn last_gave_up(&self, plugin: &str) -> Option<Failure> {
        self.registry.stats_handle(plugin).last_gave_up()
    }

    /// Live instances in the engine's pool (all zero when idle: nothing leaked).
    pub fn pool_usage(&self) -> PoolUsage {
        self.engine.pool_usage()
    }

    /// What the CPU governor has seen (demotions, throttled ticks).
    pub fn governor_stats(&self) -> GovernorStats {
        self.engine.governor().stats()
    }

    /// Reload and compile-cache counters.
    pub fn reload_counters(&self) -> ReloadCounters {
        self.registry.counters()
    }

    /// The live registry (for the admin endpoint).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The host's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Where the admin endpoint listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// A token that stops the host when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stop taking events, let in-flight ones finish (up to the grace), and wait.
    pub async fn shutdown(self) -> Result<(), ServiceError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Wait for the host to stop (after the shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), ServiceError> {
        match self.task.await {
            Ok(result) => result,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}

/// How long abandoned JetStream attempts get to send their Nak after the
/// shutdown deadline.
const SETTLE_AFTER_DEADLINE: Duration = Duration::from_secs(2);
/// How long the last flush of outgoing messages may take at shutdown.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// Quiet time after the last file event of a plugin before it is loaded.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A file that fails to load this soon after its last change may still be
/// arriving (a copy in pieces): it is retried, and reported only if it is
/// still bad once it has been unchanged this long.
const SETTLE: Duration = Duration::from_secs(2);

/// Start serving in the background.
pub async fn start(settings: Settings) -> Result<HostHandle, ServiceError> {
    let engine = WasmEngine::new(settings.engine.clone())?;
    let linker = host::linker(engine.engine()).map_err(ServiceError::Linker)?;
    // Fail fast on a missing folder; everything else is per plugin.
    registry::plugin_files(&settings.plugins)?;
    let registry = Arc::new(Registry::default());
    let metrics = Metrics::new();
    let health = Health::default();
    let shutdown = CancellationToken::new();
    let (ready_tx, ready) = watch::channel(false);
    let admin_stop = CancellationToken::new();
    let admin_addr = match settings.admin_addr {
        Some(addr) => Some(
            admin::start(
                addr,
                metrics.clone(),
                status_fn(&registry, &metrics, &health, &ready, &shutdown),
                control_fn(&registry),
                admin_stop.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let task = tokio::spawn({
        let serving = serve(
            settings,
            engine.clone(),
            linker,
            registry.clone(),
            shutdown.clone(),
            ready_tx,
            metrics.clone(),
            health.clone(),
        );
        async move {
            let result = serving.await;
            admin_stop.cancel();
            result
        }
    });
    Ok(HostHandle {
        shutdown,
        ready,
        registry,
        task,
        metrics,
        admin_addr,
        engine,
        health,
    })
}

/// What `POST /plugins/{name}/breaker/{action}` does.
fn control_fn(registry: &Arc<Registry>) -> ControlFn {
    let registry = registry.clone();
    Arc::new(move |plugin, action| {
        let forced = match action {
            "open" => Forced::Open,
            "close" | "closed" => Forced::Closed,
            "auto" => Forced::Auto,
            other => {
                return Err(format!(
                    "unknown breaker action `{other}`; use open, close or auto"
                ));
            }
        };
        registry
            .force_breaker(plugin, forced)
            .map(|state| {
                if forced == Forced::Auto {
                    state.to_string()
                } else {
                    format!("forced {state}")
                }
            })
            .ok_or_else(|| format!("no plugin `{plugin}` is loaded"))
    })
}

/// What `/readyz` and `/plugins` answer: ready when NATS is connected, every
/// plugin found at start is subscribed, every plugin in the folder is serving,
/// and the host is not shutting down.
fn status_fn(
    registry: &Arc<Registry>,
    metrics: &Metrics,
    health: &Health,
    ready: &watch::Receiver<bool>,
    shutdown: &CancellationToken,
) -> StatusFn {
    let (registry, metrics, health, ready, shutdown) = (
        registry.clone(),
        metrics.clone(),
        health.clone(),
        ready.clone(),
        shutdown.clone(),
    );
    Arc::new(move || {
        let mut not_ready = Vec::new();
        if shutdown.is_cancelled() {
            not_ready.push("shutting down".to_string());
        }
        not_ready.extend(health.problems());
        if !metrics.is_nats_connected() {
            not_ready.push("NATS is not connected (reconnecting)".to_string());
        } else if !*ready.borrow() {
            not_ready.push("subscribing plugins".to_string());
        }
        let statuses = registry.statuses();
        let count = |state: &str| statuses.iter().filter(|p| p.state == state).count() as i64;
        metrics.plugin_states(&[
            ("serving", count("serving")),
            ("failed", count("failed")),
            ("loading", count("loading")),
            ("draining", count("draining")),
        ]);
        let mut plugins = Vec::new();
        for p in &statuses {
            if p.state != "serving" {
                not_ready.push(format!(
                    "plugin `{}` is {}: {}",
                    p.name,
                    p.state,
                    p.error.as_deref().unwrap_or("no reason given")
                ));
            }
            let mut doc = serde_json::to_value(p).unwrap_or_default();
            if let (Some(obj), Some(stats)) = (doc.as_object_mut(), registry.stats(&p.name)) {
                obj.insert(
                    "stats".into(),
                    serde_json::to_value(stats).unwrap_or_default(),
                );
            }
            plugins.push(doc);
        }
        admin::Status {
            not_ready,
            plugins: serde_json::Value::Array(plugins),
        }
    })
}

/// The dedup store the settings ask for. The KV bucket opens in the
/// background with backoff: a host never falls back to a private in-memory
/// store (dedup would silently stop working across hosts).
fn open_dedup_store(
    settings: &Settings,
    js: &async_nats::jetstream::Context,
    health: &Health,
    stop: &CancellationToken,
) -> Arc<dyn DedupStore> {
    match settings.dedup_store {
        DedupStoreKind::Memory => Arc::new(MemoryStore::new(settings.dedup_ttl)),
        DedupStoreKind::Kv => dedup_kv::open_in_background(
            js.clone(),
            settings.dedup_bucket.clone(),
            settings.dedup_ttl,
            settings.values.replicas,
            health.clone(),
            stop.clone(),
        ),
    }
}

/// Make sure the DLQ stream exists, retrying with backoff in the background;
/// `/readyz` says not ready meanwhile. Dead letters published before it
/// exists fail and are retried by their events.
fn ensure_dlq_in_background(
    js: async_nats::jetstream::Context,
    stream: String,
    replicas: usize,
    health: Health,
    stop: CancellationToken,
) {
    keep_trying(
        health,
        format!("DLQ stream `{stream}`"),
        "dead letters wait (JetStream events stay in their streams, core events are held in the host) until it is fixed",
        stop,
        move || {
            let (js, stream) = (js.clone(), stream.clone());
            async move {
                dead_letter::ensure_stream(&js, &stream, replicas)
                    .await
                    .map(drop)
            }
        },
    );
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    settings: Settings,
    engine: WasmEngine,
    linker: Linker<HostState>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    ready: watch::Sender<bool>,
    metrics: Metrics,
    health: Health,
) -> Result<(), ServiceError> {
    let client = match nats::connect(&settings.nats, &shutdown, Some(&metrics)).await {
        Ok(client) => client,
        Err(nats::ConnectError::Cancelled(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let js = async_nats::jetstream::new(client.clone());
    ensure_dlq_in_background(
        js.clone(),
        settings.dlq_stream.clone(),
        settings.values.replicas,
        health.clone(),
        shutdown.clone(),
    );
    let dedup = open_dedup_store(&settings, &js, &health, &shutdown);
    let tasks = TaskTracker::new();
    let deadline = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let dispatcher =
        Arc::new(Dispatcher::new(engine.clone(), client.clone()).with_metrics(metrics.clone()));
    let triggers = Arc::new(TriggerContext {
        dispatcher,
        dedup: Some(dedup),
        metrics: metrics.clone(),
        health,
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
        deadline: deadline.clone(),
        hard_stop: hard_stop.clone(),
        grace: settings.shutdown_grace,
    });
    // Watch before the initial scan, so a file landing in between is not missed.
    let (watcher, mut changes) = match watcher::watch(&settings.plugins) {
        Ok((w, rx)) => (Some(w), rx),
        Err(e) => {
            tracing::error!("{e}");
            (None, mpsc::unbounded_channel().1)
        }
    };
    let cache = settings.compile_cache.clone().map(CompileCache::new);
    let mut supervisor = Supervisor {
        settings,
        engine,
        linker,
        cache,
        client: client.clone(),
        js,
        triggers,
        registry,
        metrics,
        subscriptions: TaskTracker::new(),
        shutdown: shutdown.clone(),
        active: HashMap::new(),
    };
    let initial: Vec<String> = match registry::plugin_files(&supervisor.settings.plugins) {
        Ok(files) => files
            .iter()
            .filter_map(|p| registry::loader::plugin_name(p))
            .collect(),
        Err(e) => {
            tracing::error!("{e}");
            Vec::new()
        }
    };
    if initial.is_empty() {
        tracing::warn!(folder = %supervisor.settings.plugins.display(), "no plugin to serve yet; copy <name>.wasm and <name>.toml into the folder");
    }
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    for name in &initial {
        if let Some(retry) = supervisor.reconcile(name).await {
            due.insert(name.clone(), retry);
        }
    }
    // The server has processed every SUB once a round trip completes.
    if let Err(e) = nats::sync::synced(&client, Duration::from_secs(5)).await {
        tracing::warn!("after subscribing: {e}");
    }
    let _ = ready.send(true);
    tracing::info!(folder = %supervisor.settings.plugins.display(), "sluice is serving; watching the plugin folder for deploys");

    // Follow deploys: debounce per plugin, wait until files are stable, reconcile.
    loop {
        let next = due.values().min().copied();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = changes.recv() => match changed {
                Some(name) => { due.insert(name, Instant::now() + DEBOUNCE); }
                None => { shutdown.cancelled().await; break; }
            },
            _ = sleep_until(next), if next.is_some() => {
                let now = Instant::now();
                let ready_names: Vec<String> = due.iter().filter(|(_, t)| **t <= now).map(|(n, _)| n.clone()).collect();
                for name in ready_names {
                    due.remove(&name);
                    if supervisor.files_settled(&name).await {
                        if let Some(retry) = supervisor.reconcile(&name).await {
                            due.insert(name, retry);
                        }
                    } else {
                        due.insert(name, Instant::now() + DEBOUNCE);
                    }
                }
            }
        }
    }
    drop(watcher);

    let grace = supervisor.settings.shutdown_grace;
    tracing::info!(
        "shutting down: no new events; waiting up to {grace:?} for in-flight and buffered events"
    );
    let subscriptions = supervisor.subscriptions.clone();
    subscriptions.close();
    tasks.close();
    let drained = async {
        subscriptions.wait().await;
        tasks.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            "events did not finish within {grace:?} (shutdown_grace); JetStream events are handed back for redelivery, core events still held are dead-lettered with class `shutdown`"
        );
        deadline.cancel();
        let settled = async {
            subscriptions.wait().await;
            tasks.wait().await;
        };
        if tokio::time::timeout(SETTLE_AFTER_DEADLINE, settled)
            .await
            .is_err()
        {
            // NATS is unreachable or the DLQ does not answer: stop anyway,
            // saying what could not be settled.
            hard_stop.cancel();
            let left = async {
                subscriptions.wait().await;
                tasks.wait().await;
            };
            if tokio::time::timeout(Duration::from_millis(500), left)
                .await
                .is_err()
            {
                tracing::error!(
                    "stopping with events unsettled after {SETTLE_AFTER_DEADLINE:?} past the deadline (NATS unreachable?): JetStream events are redelivered after ack_wait; core events not dead-lettered are counted in sluice_events_lost_total"
                );
            }
        }
    }
    match tokio::time::timeout(FINAL_FLUSH, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("final NATS flush failed: {e}"),
        Err(_) => tracing::warn!(
            "final NATS flush did not finish within {FINAL_FLUSH:?} (NATS unreachable?)"
        ),
    }
    tracing::info!("sluice stopped");
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// What a plugin's subscriptions depend on: when it changes, they are redone.
#[derive(Debug, Clone, PartialEq)]
struct SubscriptionSpec {
    mode: DeliveryMode,
    subjects: Vec<String>,
    queue_group: Option<String>,
    jetstream: Option<JetStreamSettings>,
    concurrency: u32,
    /// Sizes the JetStream consumer's `ack_wait`.
    timeout: Duration,
    core_buffer: Option<usize>,
}

impl SubscriptionSpec {
    fn of(manifest: &Manifest, concurrency: u32, timeout: Duration) -> Self {
        // A core subscription does not depend on the concurrency or the time
        // limit (the route carries them): changing them swaps the route only.
        let core = manifest.mode == DeliveryMode::Core;
        SubscriptionSpec {
            mode: manifest.mode,
            subjects: manifest.subjects.clone(),
            queue_group: manifest.queue_group.clone(),
            jetstream: manifest.jetstream.clone(),
            concurrency: if core { 0 } else { concurrency },
            timeout: if core { Duration::ZERO } else { timeout },
            core_buffer: manifest.core_buffer,
        }
    }

    /// Both are core subscriptions that differ only in their subjects.
    fn differs_in_core_subjects_only(&self, new: &SubscriptionSpec) -> bool {
        self.mode == DeliveryMode::Core
            && new.mode == DeliveryMode::Core
            && self.queue_group == new.queue_group
            && self.core_buffer == new.core_buffer
            && self.subjects != new.subjects
    }
}

/// A plugin in service.
struct Active {
    /// The serving version; subscription loops read it for every event.
    slot: Arc<ArcSwap<Route>>,
    spec: SubscriptionSpec,
    /// Stops this plugin's subscription loops.
    stop: CancellationToken,
    /// A core plugin's trigger, whose subjects a reload can change in place.
    core: Option<trigger::core::CoreTrigger>,
    fingerprint: registry::loader::Fingerprint,
}

/// Owns every plugin's lifecycle after start.
struct Supervisor {
    settings: Settings,
    engine: WasmEngine,
    linker: Linker<HostState>,
    cache: Option<CompileCache>,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    triggers: Arc<TriggerContext>,
    registry: Arc<Registry>,
    metrics: Metrics,
    subscriptions: TaskTracker,
    shutdown: CancellationToken,
    active: HashMap<String, Active>,
}

impl Supervisor {
    fn wasm_path(&self, name: &str) -> PathBuf {
        self.settings.plugins.join(format!("{name}.wasm"))
    }

    /// Whether `name`'s files are not changing right now (same size and
    /// modification time across a short pause).
    async fn files_settled(&self, name: &str) -> bool {
        let wasm = self.wasm_path(name);
        let files = [wasm.clone(), wasm.with_extension("toml")];
        let stat = || {
            files
                .iter()
                .map(|f| {
                    std::fs::metadata(f)
                        .ok()
                        .map(|m| (m.len(), m.modified().ok()))
                })
                .collect::<Vec<_>>()
        };
        let before = stat();
        tokio::time::sleep(Duration::from_millis(50)).await;
        before == stat()
    }

    /// How long ago `name`'s files last changed.
    fn files_age(&self, name: &str) -> Duration {
        let wasm = self.wasm_path(name);
        [wasm.clone(), wasm.with_extension("toml")]
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok()?.modified().ok())
            .filter_map(|t| t.elapsed().ok())
            .min()
            .unwrap_or(Duration::MAX)
    }

    /// Bring plugin `name` in line with its files. Returns when to look
    /// again if the files failed to load but may still be arriving.
    async fn reconcile(&mut self, name: &str) -> Option<Instant> {
        let wasm = self.wasm_path(name);
        if !wasm.exists() {
            if let Some(active) = self.active.remove(name) {
                active.stop.cancel();
                self.registry.removed(name);
                tracing::info!(
                    plugin = name, version = %active.slot.load().tag.version,
                    "plugin removed: unsubscribed; in-flight, buffered and retrying events finish within shutdown_grace (a JetStream consumer is kept, so its events wait for a redeploy)"
                );
            }
            return None;
        }
        self.registry.loading(name);
        let loaded = match registry::load_plugin(
            &self.engine,
            &self.linker,
            &wasm,
            self.cache.as_ref(),
        )
        .await
        {
            Ok(loaded) => loaded,
            Err(e) => {
                let age = self.files_age(name);
                if age < SETTLE {
                    tracing::debug!(
                        plugin = name,
                        "load failed on files changed {age:?} ago ({e}); retrying once they settle"
                    );
                    return Some(Instant::now() + (SETTLE - age));
                }
                match self.active.get(name) {
                    Some(active) => tracing::error!(
                        "{e}; version {} keeps serving. Copy a good file to fix it",
                        active.slot.load().tag.version
                    ),
                    None => tracing::error!("{e}; this plugin is not served, the others are"),
                }
                self.registry.failed(name, e.kind.to_string());
                self.metrics.plugin_reload_failed(name);
                return None;
            }
        };
        if self
            .active
            .get(name)
            .is_some_and(|a| a.fingerprint == loaded.fingerprint)
        {
            self.registry.loading_done_unchanged(name);
            tracing::debug!(
                plugin = name,
                "files rewritten with identical content; nothing to do"
            );
            return None;
        }
        let sandbox = self.sandbox_of(&loaded);
        let spec = SubscriptionSpec::of(
            &loaded.manifest,
            sandbox.limits.max_concurrency,
            sandbox.limits.invoke_limits().timeout,
        );
        let cached = loaded.compiled.provenance == Provenance::Cached;
        let version = loaded.compiled.info.version.clone();
        let mode = match loaded.manifest.mode {
            DeliveryMode::Core => "core",
            DeliveryMode::Jetstream => "jetstream",
        };
        let previous = self
            .active
            .get(name)
            .map(|a| a.slot.load().tag.version.to_string());
        // The slots in use carry over when the limit stays.
        let semaphore = self
            .active
            .get(name)
            .filter(|a| {
                (a.spec == spec || a.spec.differs_in_core_subjects_only(&spec))
                    && a.slot.load().max_concurrency == sandbox.limits.max_concurrency as usize
            })
            .map(|a| a.slot.load().concurrency.clone());
        let config = match self
            .settings
            .sandbox
            .config_of(name, &loaded.manifest.config)
        {
            Ok(config) => Arc::new(config),
            Err(e) => {
                tracing::error!(plugin = name, "{e}; the previous version (if any) stays");
                self.registry.failed(name, e.to_string());
                self.metrics.plugin_reload_failed(name);
                return None;
            }
        };
        let state = match self.state_space(&loaded).await {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(plugin = name, "{e}; the previous version (if any) stays");
                self.registry.failed(name, e);
                self.metrics.plugin_reload_failed(name);
                return None;
            }
        };
        let route = self.route_for(&loaded, semaphore, config, state);
        let subjects = &loaded.manifest.subjects;
        match self.active.get_mut(name) {
            // Same subscriptions: an atomic swap of the serving version.
            Some(active) if active.spec == spec => {
                active.slot.store(route.clone());
                active.fingerprint = loaded.fingerprint;
                self.registry
                    .serving(name, route, subjects.clone(), mode, cached);
            }
            // Core, other subjects only: the subjects kept keep their
            // subscriptions; the new ones are made before the switch, the
            // removed ones drain after it.
            Some(Active {
                core: Some(core),
                spec: active_spec,
                slot,
                fingerprint,
                ..
            }) if active_spec.differs_in_core_subjects_only(&spec) => {
                if let Err(e) = core.add(subjects, &self.subscriptions).await {
                    tracing::error!(plugin = name, "{e}; the previous subscriptions stay");
                    self.registry.failed(name, e.to_string());
                    self.metrics.plugin_reload_failed(name);
                    return None;
                }
                slot.store(route.clone());
                core.retain(subjects);
                *active_spec = spec;
                *fingerprint = loaded.fingerprint;
                self.registry
                    .serving(name, route, subjects.clone(), mode, cached);
            }
            // New subscriptions first, then the old ones drain.
            _ => {
                let slot = Arc::new(ArcSwap::new(route.clone()));
                let stop = self.shutdown.child_token();
                let core = match self.subscribe(&loaded, &slot, &stop).await {
                    Ok(core) => core,
                    Err(e) => {
                        stop.cancel();
                        tracing::error!(
                            plugin = name,
                            "{e}; the previous subscriptions (if any) stay"
                        );
                        self.registry.failed(name, e.to_string());
                        self.metrics.plugin_reload_failed(name);
                        return None;
                    }
                };
                if let Some(old) = self.active.remove(name) {
                    // Core events the old subscriptions still hold (buffered,
                    // retrying) are handled by the new version.
                    old.slot.store(route.clone());
                    old.stop.cancel();
                }
                self.active.insert(
                    name.to_string(),
                    Active {
                        slot,
                        spec,
                        stop,
                        core,
                        fingerprint: loaded.fingerprint,
                    },
                );
                self.registry
                    .serving(name, route, subjects.clone(), mode, cached);
            }
        }
        self.metrics.plugin_registered(name);
        if previous.is_some() {
            self.metrics.plugin_reloaded(name);
        }
        let how = if cached {
            "from the compile cache"
        } else {
            "compiled"
        };
        match previous {
            Some(old) => {
                tracing::info!(plugin = name, from = %old, to = %version, "plugin updated ({how}); in-flight events finish on {old}")
            }
            None => tracing::info!(
                plugin = name, version = %version, contract = %loaded.compiled.info.contract_version,
                subjects = ?loaded.manifest.subjects, mode, "plugin loaded ({how})"
            ),
        }
        None
    }

    /// What `plugin` may do: its manifest's limits and grants under the
    /// operator's ceilings and allow-lists.
    fn sandbox_of(&self, plugin: &LoadedPlugin) -> PluginSandbox {
        let manifest = &plugin.manifest;
        self.settings
            .sandbox
            .resolve(&plugin.name, &manifest.limits, &manifest.publish)
    }

    /// The state key space of `plugin` when its manifest asks for state and
    /// the operator has not turned it off; the bucket is created if missing.
    async fn state_space(&self, plugin: &LoadedPlugin) -> Result<Option<StateSpace>, String> {
        if !plugin.manifest.state {
            return Ok(None);
        }
        let Some(bucket) = self.settings.sandbox.state_bucket_of(&plugin.name) else {
            tracing::warn!(
                plugin = %plugin.name,
                "the manifest asks for state, but the operator's state_bucket is off: state calls will be refused"
            );
            return Ok(None);
        };
        StateSpace::open(&self.js, &bucket, &plugin.name)
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    }

    fn route_for(
        &self,
        plugin: &LoadedPlugin,
        concurrency: Option<Arc<Semaphore>>,
        config: Arc<PluginConfig>,
        state: Option<StateSpace>,
    ) -> Arc<Route> {
        let manifest = &plugin.manifest;
        let sandbox = self.sandbox_of(plugin);
        for capped in &sandbox.capped {
            tracing::warn!(plugin = %plugin.name, "manifest {capped}; the operator's limit applies");
        }
        let limits = sandbox.limits;
        Arc::new(Route {
            tag: PluginTag {
                name: plugin.name.as_str().into(),
                version: plugin.compiled.info.version.as_str().into(),
            },
            compiled: plugin.compiled.clone(),
            cpu: self.engine.governor().profile_of(&plugin.name),
            grants: Arc::new(sandbox.grants),
            config,
            state,
            request_grants: self
                .settings
                .sandbox
                .request_grants_of(&plugin.name, &manifest.request)
                .map(Arc::new),
            http: self
                .settings
                .sandbox
                .http_policy_of(&plugin.name, &manifest.http)
                .map(Arc::new),
            limits: limits.invoke_limits(),
            retry: apply_retry(self.settings.retry, &manifest.retry),
            concurrency: concurrency
                .unwrap_or_else(|| Arc::new(Semaphore::new(limits.max_concurrency as usize))),
            max_concurrency: limits.max_concurrency as usize,
            log_budget: Arc::new(LogBudget::new(limits.max_log_rate)),
            warm: (manifest.isolation == Isolation::Reuse).then(|| {
                Arc::new(WarmPool::new(
                    manifest.reuse_limit,
                    limits.max_concurrency as usize,
                ))
            }),
            stats: self.registry.stats_handle(&plugin.name),
            key_source: manifest.idempotency.key.clone(),
            hash_headers: manifest.idempotency.hash_headers.clone(),
            dedup: manifest.idempotency.dedup,
            confirm_publishes: manifest.confirm_publishes,
            in_flight: Default::default(),
            recent_call_ns: (crate::dispatch::UNKNOWN_CALL.as_nanos() as u64).into(),
            breaker: self.registry.breaker_handle(
                &plugin.name,
                manifest
                    .breaker
                    .apply(self.settings.breaker.apply(BreakerPolicy::default())),
            ),
            when_open: manifest
                .breaker
                .when_open
                .or(self.settings.breaker.when_open)
                .unwrap_or_default(),
            metrics: self.metrics.clone(),
            plugin_metrics: self.metrics.for_plugin(&plugin.name),
        })
    }

    /// Start the trigger of `plugin`, reading the route from `slot`.
    async fn subscribe(
        &self,
        plugin: &LoadedPlugin,
        slot: &Arc<ArcSwap<Route>>,
        stop: &CancellationToken,
    ) -> Result<Option<trigger::core::CoreTrigger>, SubscribeError> {
        let manifest = &plugin.manifest;
        match manifest.mode {
            DeliveryMode::Core => trigger::core::start(
                self.triggers.clone(),
                trigger::core::CoreSetup {
                    client: self.client.clone(),
                    plugin: plugin.name.clone(),
                    subjects: manifest.subjects.clone(),
                    queue_group: manifest.queue_group.clone(),
                    buffer: manifest.core_buffer.unwrap_or(self.settings.core_buffer),
                },
                slot.clone(),
                stop.clone(),
                &self.subscriptions,
            )
            .await
            .map(Some)
            .map_err(Into::into),
            DeliveryMode::Jetstream => trigger::jetstream::start(
                self.triggers.clone(),
                trigger::jetstream::ConsumerSetup {
                    js: self.js.clone(),
                    plugin: plugin.name.clone(),
                    manifest: manifest.clone(),
                    concurrency: self.sandbox_of(plugin).limits.max_concurrency,
                    timeout: slot.load().limits.timeout,
                    replicas: self.settings.values.replicas,
                },
                slot.clone(),
                stop.clone(),
                &self.subscriptions,
            )
            .await
            .map(|()| None)
            .map_err(Into::into),
        }
    }
}
