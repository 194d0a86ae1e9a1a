//! The running host: load the plugin folder, connect to NATS, subscribe each
//! plugin's subjects, dispatch events, and shut down cleanly.
//!
//! [`start`] returns a [`HostHandle`] at once; connecting and subscribing go
//! on in the background (so an unreachable NATS is retried and reported rather
//! than fatal). [`HostHandle::ready`] resolves once every plugin is subscribed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use thiserror::Error;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Settings, apply_retry};
use crate::dispatch::{Dispatcher, PluginStats, Route, StatsSnapshot};
use crate::engine::governor::GovernorStats;
use crate::engine::invoke::Failure;
use crate::engine::{EngineError, PoolUsage, WasmEngine};
use crate::host::{self, LogBudget, PluginTag};
use crate::nats;
use crate::registry::{self, DirError, LoadedPlugin};

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

struct Shared {
    status: BTreeMap<String, PluginStatus>,
    stats: BTreeMap<String, Arc<PluginStats>>,
    engine: WasmEngine,
}

/// Control of a running host.
pub struct HostHandle {
    shutdown: CancellationToken,
    ready: watch::Receiver<bool>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
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

    /// The failure of the last event of `plugin` given up on (class and message).
    pub fn last_gave_up(&self, plugin: &str) -> Option<Failure> {
        self.shared.stats.get(plugin).and_then(|s| s.last_gave_up())
    }

    /// Live instances in the engine's pool (all zero when idle: nothing leaked).
    pub fn pool_usage(&self) -> PoolUsage {
        self.shared.engine.pool_usage()
    }

    /// What the CPU governor has seen (demotions, throttled ticks).
    pub fn governor_stats(&self) -> GovernorStats {
        self.shared.engine.governor().stats()
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

/// How long in-flight events may take to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Load plugins and start serving in the background.
pub async fn start(settings: Settings) -> Result<HostHandle, ServiceError> {
    let engine = WasmEngine::new(settings.engine.clone())?;
    let linker = host::linker(engine.engine()).map_err(ServiceError::Linker)?;
    let set = registry::load_dir(&engine, &linker, &settings.plugins).await?;

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
            },
        );
        let route = route_for(&settings, &plugin);
        stats.insert(plugin.name.clone(), route.stats.clone());
        routes.push((plugin, route));
    }
    if routes.is_empty() {
        tracing::warn!(folder = %settings.plugins.display(), "no plugin to serve; copy <name>.wasm and <name>.toml into the folder");
    }

    let shared = Arc::new(Shared {
        status,
        stats,
        engine: engine.clone(),
    });
    let shutdown = CancellationToken::new();
    let (ready_tx, ready) = watch::channel(false);
    let task = tokio::spawn(serve(settings, engine, routes, shutdown.clone(), ready_tx));
    Ok(HostHandle {
        shutdown,
        ready,
        shared,
        task,
    })
}

fn route_for(settings: &Settings, plugin: &LoadedPlugin) -> Arc<Route> {
    let manifest = &plugin.manifest;
    let sandbox = settings
        .sandbox
        .resolve(&plugin.name, &manifest.limits, &manifest.publish);
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
        retry: apply_retry(settings.retry, &manifest.retry),
        concurrency: Arc::new(Semaphore::new(limits.max_concurrency as usize)),
        log_budget: Arc::new(LogBudget::new(limits.max_log_rate)),
        stats: Arc::new(PluginStats::default()),
    })
}

async fn serve(
    settings: Settings,
    engine: WasmEngine,
    routes: Vec<(LoadedPlugin, Arc<Route>)>,
    shutdown: CancellationToken,
    ready: watch::Sender<bool>,
) -> Result<(), ServiceError> {
    let client = match nats::connect(&settings.nats_urls, &shutdown).await {
        Ok(client) => client,
        Err(nats::ConnectError::Cancelled(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let tasks = TaskTracker::new();
    let dispatcher = Arc::new(Dispatcher::new(
        engine,
        client.clone(),
        tasks.clone(),
        shutdown.clone(),
    ));
    let subscriptions = TaskTracker::new();
    for (plugin, route) in routes {
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
            tracing::info!(plugin = %plugin.name, subject = %subject, queue_group = ?plugin.manifest.queue_group, "subscribed");
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
    }
    // The server has processed every SUB once a flush round-trip completes.
    if let Err(e) = client.flush().await {
        tracing::warn!("NATS flush after subscribing failed: {e}");
    }
    let _ = ready.send(true);
    tracing::info!("sluice is serving");

    shutdown.cancelled().await;
    tracing::info!("shutting down: no new events; waiting for in-flight events");
    subscriptions.close();
    subscriptions.wait().await;
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "in-flight events did not finish within {SHUTDOWN_GRACE:?}; stopping anyway"
        );
    }
    if let Err(e) = client.flush().await {
        tracing::warn!("final NATS flush failed: {e}");
    }
    tracing::info!("sluice stopped");
    Ok(())
}
