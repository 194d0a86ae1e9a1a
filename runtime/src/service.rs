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
use futures::StreamExt;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime::component::Linker;

use crate::config::{DedupStoreKind, Settings, apply_retry};
use crate::delivery::breaker::{BreakerPolicy, Forced};
use crate::delivery::dead_letter;
use crate::delivery::dedup::{DedupStore, MemoryStore};
use crate::delivery::dedup_kv::KvStore;
use crate::dispatch::warm::WarmPool;
use crate::dispatch::{Dispatcher, Route, StatsSnapshot};
use crate::engine::cache::{CompileCache, Provenance};
use crate::engine::governor::GovernorStats;
use crate::engine::invoke::Failure;
use crate::engine::{EngineError, PoolUsage, WasmEngine};
use crate::host::{self, HostState, LogBudget, PluginTag};
use crate::limits::PluginSandbox;
use crate::manifest::{DeliveryMode, Isolation, JetStreamSettings, Manifest};
use crate::nats;
use crate::nats::jetstream::{ConsumerSpec, durable_consumer};
use crate::registry::{
    self, DirError, LoadedPlugin, PluginStatus, Registry, ReloadCounters, watcher,
};
use crate::telemetry::Metrics;
use crate::telemetry::admin::{self, AdminError, ControlFn, StatusFn};

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
    #[error("cannot subscribe to `{subject}`: {message}")]
    Core { subject: String, message: String },
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
}

impl HostHandle {
    /// Wait until NATS is connected and every plugin found at start is subscribed.
    pub async fn ready(&mut self) -> bool {
        self.ready.wait_for(|r| *r).await.is_ok()
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
    let shutdown = CancellationToken::new();
    let (ready_tx, ready) = watch::channel(false);
    let admin_stop = CancellationToken::new();
    let admin_addr = match settings.admin_addr {
        Some(addr) => Some(
            admin::start(
                addr,
                metrics.clone(),
                status_fn(&registry, &metrics, &ready, &shutdown),
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
    ready: &watch::Receiver<bool>,
    shutdown: &CancellationToken,
) -> StatusFn {
    let (registry, metrics, ready, shutdown) = (
        registry.clone(),
        metrics.clone(),
        ready.clone(),
        shutdown.clone(),
    );
    Arc::new(move || {
        let mut not_ready = Vec::new();
        if shutdown.is_cancelled() {
            not_ready.push("shutting down".to_string());
        }
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

async fn open_dedup_store(
    settings: &Settings,
    js: &async_nats::jetstream::Context,
) -> Option<Arc<dyn DedupStore>> {
    match settings.dedup_store {
        DedupStoreKind::Memory => Some(Arc::new(MemoryStore::new(settings.dedup_ttl))),
        DedupStoreKind::Kv => match KvStore::open(js, &settings.dedup_bucket, settings.dedup_ttl)
            .await
        {
            Ok(store) => Some(Arc::new(store)),
            Err(e) => {
                tracing::error!("{e}; falling back to an in-memory dedup store (this host only)");
                Some(Arc::new(MemoryStore::new(settings.dedup_ttl)))
            }
        },
    }
}

async fn serve(
    settings: Settings,
    engine: WasmEngine,
    linker: Linker<HostState>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    ready: watch::Sender<bool>,
    metrics: Metrics,
) -> Result<(), ServiceError> {
    let client = match nats::connect(&settings.nats, &shutdown, Some(&metrics)).await {
        Ok(client) => client,
        Err(nats::ConnectError::Cancelled(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let js = async_nats::jetstream::new(client.clone());
    if let Err(e) = dead_letter::ensure_stream(&js, &settings.dlq_stream).await {
        tracing::error!(
            "{e}; dead-lettering will fail (core events are then lost, JetStream events redelivered) until it is fixed"
        );
    }
    let dedup = open_dedup_store(&settings, &js).await;
    let tasks = TaskTracker::new();
    let deadline = CancellationToken::new();
    let dispatcher = Arc::new(
        Dispatcher::new(
            engine.clone(),
            client.clone(),
            dedup,
            tasks.clone(),
            shutdown.clone(),
        )
        .with_metrics(metrics.clone())
        .with_abort(deadline.clone()),
    );
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
        dispatcher,
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
    // The server has processed every SUB once a flush round-trip completes.
    if let Err(e) = client.flush().await {
        tracing::warn!("NATS flush after subscribing failed: {e}");
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
    tracing::info!("shutting down: no new events; waiting up to {grace:?} for in-flight events");
    let subscriptions = supervisor.subscriptions.clone();
    subscriptions.close();
    tasks.close();
    let drained = async {
        subscriptions.wait().await;
        tasks.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            "in-flight events did not finish within {grace:?} (shutdown_grace); JetStream events are handed back for redelivery, core events still running are dropped"
        );
        deadline.cancel();
        let settled = async {
            subscriptions.wait().await;
            tasks.wait().await;
        };
        let _ = tokio::time::timeout(SETTLE_AFTER_DEADLINE, settled).await;
    }
    if let Err(e) = client.flush().await {
        tracing::warn!("final NATS flush failed: {e}");
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
}

impl SubscriptionSpec {
    fn of(manifest: &Manifest, concurrency: u32) -> Self {
        SubscriptionSpec {
            mode: manifest.mode,
            subjects: manifest.subjects.clone(),
            queue_group: manifest.queue_group.clone(),
            jetstream: manifest.jetstream.clone(),
            concurrency,
        }
    }
}

/// A plugin in service.
struct Active {
    /// The serving version; subscription loops read it for every event.
    slot: Arc<ArcSwap<Route>>,
    spec: SubscriptionSpec,
    /// Stops this plugin's subscription loops.
    stop: CancellationToken,
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
    dispatcher: Arc<Dispatcher>,
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
                    "plugin removed: unsubscribed; in-flight events finish (a JetStream consumer is kept, so events wait for a redeploy)"
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
        let spec = SubscriptionSpec::of(
            &loaded.manifest,
            self.sandbox_of(&loaded).limits.max_concurrency,
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
        let same_spec = self.active.get(name).filter(|a| a.spec == spec);
        let semaphore = same_spec.map(|a| a.slot.load().concurrency.clone());
        let route = self.route_for(&loaded, semaphore);
        match self.active.get_mut(name) {
            // Same subscriptions: an atomic swap of the serving version.
            Some(active) if active.spec == spec => {
                active.slot.store(route.clone());
                active.fingerprint = loaded.fingerprint;
                self.registry
                    .serving(name, route, loaded.manifest.subjects.clone(), mode, cached);
            }
            // New subscriptions first, then the old ones drain.
            _ => {
                let slot = Arc::new(ArcSwap::new(route.clone()));
                let stop = self.shutdown.child_token();
                if let Err(e) = self.subscribe(&loaded, &slot, &stop).await {
                    stop.cancel();
                    tracing::error!(
                        plugin = name,
                        "{e}; the previous subscriptions (if any) stay"
                    );
                    self.registry.failed(name, e.to_string());
                    self.metrics.plugin_reload_failed(name);
                    return None;
                }
                if let Some(old) = self.active.remove(name) {
                    old.stop.cancel();
                }
                self.active.insert(
                    name.to_string(),
                    Active {
                        slot,
                        spec,
                        stop,
                        fingerprint: loaded.fingerprint,
                    },
                );
                self.registry
                    .serving(name, route, loaded.manifest.subjects.clone(), mode, cached);
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

    fn route_for(&self, plugin: &LoadedPlugin, concurrency: Option<Arc<Semaphore>>) -> Arc<Route> {
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
            grants: Arc::new(sandbox.grants),
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

    /// Start the subscription loops of `plugin`, reading the route from `slot`.
    async fn subscribe(
        &self,
        plugin: &LoadedPlugin,
        slot: &Arc<ArcSwap<Route>>,
        stop: &CancellationToken,
    ) -> Result<(), SubscribeError> {
        match plugin.manifest.mode {
            DeliveryMode::Core => self.subscribe_core(plugin, slot, stop).await,
            DeliveryMode::Jetstream => self.consume_jetstream(plugin, slot, stop).await,
        }
    }

    async fn subscribe_core(
        &self,
        plugin: &LoadedPlugin,
        slot: &Arc<ArcSwap<Route>>,
        stop: &CancellationToken,
    ) -> Result<(), SubscribeError> {
        let mut subscribers = Vec::new();
        for subject in &plugin.manifest.subjects {
            let subscriber = match &plugin.manifest.queue_group {
                Some(group) => {
                    self.client
                        .queue_subscribe(subject.clone(), group.clone())
                        .await
                }
                None => self.client.subscribe(subject.clone()).await,
            }
            .map_err(|e| SubscribeError::Core {
                subject: subject.clone(),
                message: e.to_string(),
            })?;
            subscribers.push(subscriber);
        }
        // Once the server has the SUBs, publishers can count on them.
        if let Err(e) = self.client.flush().await {
            tracing::warn!(plugin = %plugin.name, "NATS flush after subscribing failed: {e}");
        }
        // Core NATS cannot slow a publisher down: events wait in a bounded
        // buffer while every slot is busy, and past it they are dropped and
        // counted (logged at most once a second), never silently.
        let buffer = plugin
            .manifest
            .core_buffer
            .unwrap_or(self.settings.core_buffer);
        let (tx, mut rx) = mpsc::channel::<async_nats::Message>(buffer);
        for (subject, mut subscriber) in plugin.manifest.subjects.iter().zip(subscribers) {
            tracing::info!(plugin = %plugin.name, subject = %subject, queue_group = ?plugin.manifest.queue_group, "subscribed (core NATS)");
            let tx = tx.clone();
            let slot = slot.clone();
            let stop = stop.clone();
            let name = plugin.name.clone();
            let dispatcher = self.dispatcher.clone();
            self.subscriptions.spawn(async move {
                let mut last_report = Instant::now() - Duration::from_secs(1);
                let mut unreported = 0u64;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        message = subscriber.next() => match message {
                            Some(message) => {
                                // Nothing buffered and a slot free: start it
                                // here, one task hop sooner. (A message the
                                // dispatcher already took and waits to start
                                // is ahead in the semaphore's queue: a freed
                                // slot goes to it, not to `try_acquire`.)
                                if tx.capacity() == tx.max_capacity() {
                                    let route = slot.load_full();
                                    if let Ok(permit) = route.concurrency.clone().try_acquire_owned() {
                                        dispatcher.start_core(route, message, permit);
                                        continue;
                                    }
                                }
                                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(message) {
                                    let route = slot.load();
                                    crate::dispatch::count_dropped(&route);
                                    unreported += 1;
                                    if last_report.elapsed() >= Duration::from_secs(1) {
                                        tracing::warn!(
                                            plugin = %name, dropped = unreported,
                                            "core NATS buffer of {buffer} events is full (the plugin is slower than its traffic): events dropped; raise max_concurrency or core_buffer, add hosts to a queue group, or use mode = \"jetstream\""
                                        );
                                        last_report = Instant::now();
                                        unreported = 0;
                                    }
                                }
                            }
                            None => break,
                        },
                    }
                }
                let _ = subscriber.unsubscribe().await;
            });
        }
        drop(tx);
        let dispatcher = self.dispatcher.clone();
        let slot = slot.clone();
        let stop = stop.clone();
        self.subscriptions.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    message = rx.recv() => match message {
                        Some(message) => dispatcher.dispatch_core(slot.load_full(), message).await,
                        None => break,
                    },
                }
            }
        });
        Ok(())
    }

    async fn consume_jetstream(
        &self,
        plugin: &LoadedPlugin,
        slot: &Arc<ArcSwap<Route>>,
        stop: &CancellationToken,
    ) -> Result<(), SubscribeError> {
        let concurrency = self.sandbox_of(plugin).limits.max_concurrency;
        let spec = ConsumerSpec {
            plugin: &plugin.name,
            manifest: &plugin.manifest,
            concurrency,
            timeout: slot.load().limits.timeout,
        };
        let consumer = durable_consumer(&self.js, &spec).await?;
        tracing::info!(
            plugin = %plugin.name, stream = ?plugin.manifest.jetstream.as_ref().map(|j| &j.stream),
            durable = ?plugin.manifest.durable_name(&plugin.name), "consuming (JetStream)"
        );
        let dispatcher = self.dispatcher.clone();
        let slot = slot.clone();
        let stop = stop.clone();
        self.subscriptions
            .spawn(async move { dispatcher.consume_jetstream(slot, consumer, stop).await });
        Ok(())
    }
}
