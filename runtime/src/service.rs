//! The running host: load the plugin folder, connect to NATS, subscribe each
//! plugin's subjects, dispatch events, and shut down cleanly.
//!
//! [`start`] returns a [`HostHandle`] at once; connecting and subscribing go
//! on in the background (so an unreachable NATS is retried and reported rather
//! than fatal). [`HostHandle::ready`] resolves once every plugin is subscribed.
//!
//! Shutdown (the token of [`HostHandle::shutdown_token`], cancelled on
//! SIGTERM/SIGINT by the CLI): stop taking events, let in-flight ones finish
//! for up to `shutdown_grace`, then abandon what still runs (JetStream
//! messages are Nak'ed for redelivery; see `dispatch::jetstream`), flush, stop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use thiserror::Error;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{DedupStoreKind, Settings, apply_retry};
use crate::delivery::dead_letter;
use crate::delivery::dedup::{DedupStore, MemoryStore};
use crate::delivery::dedup_kv::KvStore;
use crate::dispatch::{Dispatcher, PluginStats, Route, StatsSnapshot};
use crate::engine::invoke::InvokeLimits;
use crate::engine::{EngineError, WasmEngine};
use crate::host::{self, PluginTag};
use crate::manifest::DeliveryMode;
use crate::nats;
use crate::nats::jetstream::{ConsumerSpec, durable_consumer};
use crate::registry::{self, DirError, LoadedPlugin};
use crate::telemetry::Metrics;
use crate::telemetry::admin::{self, AdminError, StatusFn};

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
    /// A JetStream consumer could not be set up.
    #[error("plugin `{plugin}`: {source}")]
    JetStream {
        /// The plugin.
        plugin: String,
        /// Why.
        source: crate::nats::jetstream::JetStreamSetupError,
    },
    /// The admin endpoint cannot listen.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A subscription was refused by the server.
    #[error("cannot subscribe plugin `{plugin}` to `{subject}`: {message}")]
    Subscribe {
        /// The plugin.
        plugin: String,
        /// The subject.
        subject: String,
        /// Why.
        message: String,
    },
}

/// How one plugin is doing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginStatus {
    /// Name.
    pub name: String,
    /// Version hash, when loaded.
    pub version: Option<String>,
    /// `serving` or `failed`.
    pub state: String,
    /// The failure reason, when failed.
    pub error: Option<String>,
    /// Subscribed subjects.
    pub subjects: Vec<String>,
    /// `core` or `jetstream`.
    pub mode: String,
}

struct Shared {
    status: BTreeMap<String, PluginStatus>,
    stats: BTreeMap<String, Arc<PluginStats>>,
}

/// Control of a running host.
pub struct HostHandle {
    shutdown: CancellationToken,
    ready: watch::Receiver<bool>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
    metrics: Metrics,
    admin_addr: Option<SocketAddr>,
}

impl HostHandle {
    /// Wait until NATS is connected and every loaded plugin is subscribed.
    pub async fn ready(&mut self) -> bool {
        self.ready.wait_for(|r| *r).await.is_ok()
    }

    /// Status of every plugin found in the folder.
    pub fn plugins(&self) -> Vec<PluginStatus> {
        self.shared.status.values().cloned().collect()
    }

    /// Counters of a loaded plugin.
    pub fn stats(&self, plugin: &str) -> Option<StatsSnapshot> {
        self.shared.stats.get(plugin).map(|s| s.snapshot())
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

    /// Stop taking events, let in-flight ones finish (up to `grace`), and wait.
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

async fn subscribe_core(
    client: &async_nats::Client,
    plugin: &LoadedPlugin,
    route: &Arc<Route>,
    dispatcher: &Arc<Dispatcher>,
    subscriptions: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), ServiceError> {
    for subject in &plugin.manifest.subjects {
        let subscriber = match &plugin.manifest.queue_group {
            Some(group) => client.queue_subscribe(subject.clone(), group.clone()).await,
            None => client.subscribe(subject.clone()).await,
        }
        .map_err(|e| ServiceError::Subscribe {
            plugin: plugin.name.clone(),
            subject: subject.clone(),
            message: e.to_string(),
        })?;
        tracing::info!(plugin = %plugin.name, subject = %subject, queue_group = ?plugin.manifest.queue_group, "subscribed (core NATS)");
        let dispatcher = dispatcher.clone();
        let route = route.clone();
        let stop = shutdown.clone();
        subscriptions.spawn(async move {
            let mut subscriber = subscriber;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    message = subscriber.next() => match message {
                        Some(message) => dispatcher.dispatch_core(route.clone(), message).await,
                        None => break,
                    },
                }
            }
            let _ = subscriber.unsubscribe().await;
        });
    }
    Ok(())
}

async fn consume_jetstream(
    js: &async_nats::jetstream::Context,
    settings: &Settings,
    plugin: &LoadedPlugin,
    route: &Arc<Route>,
    dispatcher: &Arc<Dispatcher>,
    subscriptions: &TaskTracker,
) -> Result<(), ServiceError> {
    let concurrency = plugin
        .manifest
        .max_concurrency
        .unwrap_or(settings.max_concurrency);
    let spec = ConsumerSpec {
        plugin: &plugin.name,
        manifest: &plugin.manifest,
        concurrency,
        timeout: route.limits.timeout,
    };
    let consumer = durable_consumer(js, &spec)
        .await
        .map_err(|source| ServiceError::JetStream {
            plugin: plugin.name.clone(),
            source,
        })?;
    tracing::info!(
        plugin = %plugin.name, stream = ?plugin.manifest.jetstream.as_ref().map(|j| &j.stream),
        durable = ?plugin.manifest.durable_name(&plugin.name), "consuming (JetStream)"
    );
    let dispatcher = dispatcher.clone();
    let route = route.clone();
    subscriptions.spawn(async move {
        dispatcher
            .consume_jetstream(route, consumer, concurrency as usize)
            .await
    });
    Ok(())
}

/// Load plugins and start serving in the background.
pub async fn start(settings: Settings) -> Result<HostHandle, ServiceError> {
    let engine = WasmEngine::new(settings.engine.clone())?;
    let linker = host::linker(engine.engine()).map_err(ServiceError::Linker)?;
    let set = registry::load_dir(&engine, &linker, &settings.plugins).await?;

    let metrics = Metrics::new();
    let mut status = BTreeMap::new();
    let mut stats = BTreeMap::new();
    for failed in &set.failed {
        tracing::error!("{failed}; this plugin is not served, the others are");
        status.insert(
            failed.name.clone(),
            PluginStatus {
                name: failed.name.clone(),
                version: None,
                state: "failed".into(),
                error: Some(failed.kind.to_string()),
                subjects: Vec::new(),
                mode: String::new(),
            },
        );
    }
    let mut routes = Vec::new();
    for plugin in set.loaded {
        tracing::info!(
            plugin = %plugin.name, version = %plugin.compiled.info.version,
            contract = %plugin.compiled.info.contract_version,
            subjects = ?plugin.manifest.subjects, "plugin loaded"
        );
        status.insert(
            plugin.name.clone(),
            PluginStatus {
                name: plugin.name.clone(),
                version: Some(plugin.compiled.info.version.clone()),
                state: "serving".into(),
                error: None,
                subjects: plugin.manifest.subjects.clone(),
                mode: match plugin.manifest.mode {
                    DeliveryMode::Core => "core".into(),
                    DeliveryMode::Jetstream => "jetstream".into(),
                },
            },
        );
        metrics.plugin_registered(&plugin.name);
        let route = route_for(&settings, &engine, &plugin);
        stats.insert(plugin.name.clone(), route.stats.clone());
        routes.push((plugin, route));
    }
    if routes.is_empty() {
        tracing::warn!(folder = %settings.plugins.display(), "no plugin to serve; copy <name>.wasm and <name>.toml into the folder");
    }

    metrics.plugin_states(&[
        ("serving", routes.len() as i64),
        ("failed", set.failed.len() as i64),
    ]);
    let shared = Arc::new(Shared { status, stats });
    let shutdown = CancellationToken::new();
    let (ready_tx, ready) = watch::channel(false);
    let admin_stop = CancellationToken::new();
    let admin_addr = match settings.admin_addr {
        Some(addr) => Some(
            admin::start(
                addr,
                metrics.clone(),
                status_fn(&shared, &metrics, &ready, &shutdown),
                admin_stop.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let task = tokio::spawn({
        let serving = serve(
            settings,
            engine,
            routes,
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
        shared,
        task,
        metrics,
        admin_addr,
    })
}

/// What `/readyz` and `/plugins` answer: ready when NATS is connected, every
/// plugin is subscribed, every plugin in the folder is serving, and the host
/// is not shutting down.
fn status_fn(
    shared: &Arc<Shared>,
    metrics: &Metrics,
    ready: &watch::Receiver<bool>,
    shutdown: &CancellationToken,
) -> StatusFn {
    let (shared, metrics, ready, shutdown) = (
        shared.clone(),
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
        let mut plugins = Vec::new();
        for p in shared.status.values() {
            if p.state != "serving" {
                not_ready.push(format!(
                    "plugin `{}` is {}: {}",
                    p.name,
                    p.state,
                    p.error.as_deref().unwrap_or("no reason given")
                ));
            }
            let mut doc = serde_json::to_value(p).unwrap_or_default();
            if let (Some(obj), Some(stats)) = (doc.as_object_mut(), shared.stats.get(&p.name)) {
                obj.insert(
                    "stats".into(),
                    serde_json::to_value(stats.snapshot()).unwrap_or_default(),
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

fn route_for(settings: &Settings, engine: &WasmEngine, plugin: &LoadedPlugin) -> Arc<Route> {
    let manifest = &plugin.manifest;
    let concurrency = manifest.max_concurrency.unwrap_or(settings.max_concurrency);
    Arc::new(Route {
        tag: PluginTag {
            name: plugin.name.as_str().into(),
            version: plugin.compiled.info.version.as_str().into(),
        },
        compiled: plugin.compiled.clone(),
        grants: Arc::new(manifest.publish.clone()),
        limits: InvokeLimits {
            timeout: manifest.timeout.unwrap_or(settings.timeout),
            max_memory_bytes: engine.settings().max_memory_bytes,
            max_table_elements: engine.settings().max_table_elements,
            ..InvokeLimits::default()
        },
        retry: apply_retry(settings.retry, &manifest.retry),
        concurrency: Arc::new(Semaphore::new(concurrency as usize)),
        stats: Arc::new(PluginStats::default()),
        key_source: manifest.idempotency.key.clone(),
        hash_headers: manifest.idempotency.hash_headers.clone(),
        dedup: manifest.idempotency.dedup,
        confirm_publishes: manifest.confirm_publishes,
    })
}

async fn serve(
    settings: Settings,
    engine: WasmEngine,
    routes: Vec<(LoadedPlugin, Arc<Route>)>,
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
            engine,
            client.clone(),
            dedup,
            tasks.clone(),
            shutdown.clone(),
        )
        .with_metrics(metrics)
        .with_abort(deadline.clone()),
    );
    let subscriptions = TaskTracker::new();
    for (plugin, route) in routes {
        match plugin.manifest.mode {
            DeliveryMode::Core => {
                subscribe_core(
                    &client,
                    &plugin,
                    &route,
                    &dispatcher,
                    &subscriptions,
                    &shutdown,
                )
                .await?
            }
            DeliveryMode::Jetstream => {
                consume_jetstream(&js, &settings, &plugin, &route, &dispatcher, &subscriptions)
                    .await?
            }
        }
    }
    // The server has processed every SUB once a flush round-trip completes.
    if let Err(e) = client.flush().await {
        tracing::warn!("NATS flush after subscribing failed: {e}");
    }
    let _ = ready.send(true);
    tracing::info!("sluice is serving");

    shutdown.cancelled().await;
    let grace = settings.shutdown_grace;
    tracing::info!("shutting down: no new events; waiting up to {grace:?} for in-flight events");
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
