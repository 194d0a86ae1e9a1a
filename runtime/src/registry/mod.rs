//! The plugins a host knows about: loading them from the folder
//! ([`loader`]), watching the folder for deploys ([`watcher`]), and the live
//! status of each plugin ([`Registry`]): which version serves, which older
//! versions still drain in-flight events, and why the last load failed.
//!
//! A retired version (replaced or removed) is held only weakly: its compiled
//! code and warm instances are freed as soon as its last in-flight event
//! drops it, whether or not anyone looks at the status. A sweep (every
//! [`SWEEP_EVERY`] while some version drains) forgets the drained ones and
//! keeps the `sluice_plugins` gauge current; every change of a plugin's state
//! refreshes the gauge too, so `/metrics` never depends on `/readyz` or
//! `/plugins` being polled.

pub mod loader;
pub mod watcher;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::delivery::breaker::{BreakerPolicy, CircuitBreaker, Forced};
use crate::dispatch::{PluginStats, Route, StatsSnapshot};
use crate::telemetry::Metrics;
pub use loader::{DirError, LoadError, LoadErrorKind, LoadedPlugin, load_plugin, plugin_files};

/// How one plugin is doing, as `/plugins` and `HostHandle::plugins` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginStatus {
    /// Name.
    pub name: String,
    /// Version hash of the serving version.
    pub version: Option<String>,
    /// `loading`, `serving`, `failed`, or `draining` (removed, in-flight events finishing).
    pub state: String,
    /// Why the last load failed (the serving version, if any, is unaffected).
    pub error: Option<String>,
    /// Consumed subjects.
    pub subjects: Vec<String>,
    /// `core` or `jetstream`.
    pub mode: String,
    /// When the serving version was loaded (RFC 3339).
    pub loaded_at: Option<String>,
    /// Older versions still finishing in-flight events.
    pub draining: Vec<String>,
    /// Circuit breaker: `closed`, `open` or `half-open` (with `forced-` when an operator set it).
    pub breaker: String,
}

/// How often retired versions are looked at while some drain.
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Entry {
    current: Option<Arc<Route>>,
    /// Retired versions, held weakly: the events still running on one keep
    /// it alive, nothing else does.
    retired: Vec<Weak<Route>>,
    subjects: Vec<String>,
    mode: String,
    loaded_at: Option<SystemTime>,
    error: Option<String>,
    loading: bool,
    stats: Arc<PluginStats>,
    breaker: Option<Arc<Mutex<CircuitBreaker>>>,
}

/// Host-wide reload counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadCounters {
    /// Versions put in service (initial loads included).
    pub reloads: u64,
    /// Loads that failed (the previous version, if any, kept serving).
    pub reload_failures: u64,
    /// Components compiled.
    pub compiled: u64,
    /// Components loaded from the compile cache.
    pub cache_hits: u64,
}

impl Entry {
    /// Forget retired versions with nothing left in flight (dropping this
    /// weak reference frees nothing the events do not already hold).
    fn prune(&mut self) {
        self.retired
            .retain(|r| r.upgrade().is_some_and(|r| r.in_flight() > 0));
    }

    /// The state `/plugins` reports, or `None` once nothing is left to report.
    fn state(&self) -> Option<&'static str> {
        if self.current.is_some() {
            Some("serving")
        } else if self.loading {
            Some("loading")
        } else if !self.retired.is_empty() {
            Some("draining")
        } else if self.error.is_some() {
            Some("failed")
        } else {
            None
        }
    }
}

/// The entries and where to report their states; shared with the sweep task.
#[derive(Default)]
struct Shared {
    entries: Mutex<BTreeMap<String, Entry>>,
    metrics: OnceLock<Metrics>,
    sweeping: AtomicBool,
}

impl Shared {
    /// Prune drained versions and refresh the gauge; whether any still drain.
    fn sweep(&self) -> bool {
        let mut entries = self.entries.lock().expect("registry lock");
        entries.values_mut().for_each(Entry::prune);
        self.publish(&entries);
        entries.values().any(|e| !e.retired.is_empty())
    }

    /// Set the `sluice_plugins` gauge from `entries`.
    fn publish(&self, entries: &BTreeMap<String, Entry>) {
        let Some(metrics) = self.metrics.get() else {
            return;
        };
        let count = |state: &str| {
            entries
                .values()
                .filter(|e| e.state() == Some(state))
                .count() as i64
        };
        metrics.plugin_states(&[
            ("serving", count("serving")),
            ("failed", count("failed")),
            ("loading", count("loading")),
            ("draining", count("draining")),
        ]);
    }
}

/// Sweep `shared` every [`SWEEP_EVERY`] until no version drains; one task at
/// a time, none without a tokio runtime (then `statuses` still prunes).
fn start_sweep(shared: &Arc<Shared>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if shared.sweeping.swap(true, Ordering::SeqCst) {
        return;
    }
    let shared = Arc::downgrade(shared);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if shared.sweep() {
                continue;
            }
            shared.sweeping.store(false, Ordering::SeqCst);
            // A version retired between the sweep and the store above.
            if !shared.sweep() || shared.sweeping.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    });
}

/// Live plugin status, shared by the supervisor and readers.
#[derive(Default)]
pub struct Registry {
    shared: Arc<Shared>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    compiled: AtomicU64,
    cache_hits: AtomicU64,
}

impl Registry {
    fn with<R>(&self, name: &str, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut entries = self.shared.entries.lock().expect("registry lock");
        f(entries.entry(name.to_string()).or_default())
    }

    /// Change `name`'s entry, then refresh the gauge (and start the sweep
    /// when a version was retired).
    fn change(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        let draining = {
            let mut entries = self.shared.entries.lock().expect("registry lock");
            let entry = entries.entry(name.to_string()).or_default();
            f(entry);
            entry.prune();
            let draining = !entry.retired.is_empty();
            self.shared.publish(&entries);
            draining
        };
        if draining {
            start_sweep(&self.shared);
        }
    }

    /// Keep the `sluice_plugins` gauge of `metrics` current from now on. A
    /// route put in service also brings its host's metrics, so a host's
    /// registry reports there once its first plugin serves.
    pub fn report_to(&self, metrics: &Metrics) {
        if self.shared.metrics.set(metrics.clone()).is_ok() {
            let entries = self.shared.entries.lock().expect("registry lock");
            self.shared.publish(&entries);
        }
    }

    /// Versions retired but not yet freed, across all plugins (their events
    /// still hold them).
    pub fn retired_alive(&self) -> usize {
        let entries = self.shared.entries.lock().expect("registry lock");
        entries
            .values()
            .flat_map(|e| &e.retired)
            .filter(|r| r.strong_count() > 0)
            .count()
    }

    /// The counters shared by every version of `name` (created on first use).
    pub fn stats_handle(&self, name: &str) -> Arc<PluginStats> {
        self.with(name, |e| e.stats.clone())
    }

    /// The circuit breaker of `name` (kept across versions), with `policy`.
    pub fn breaker_handle(&self, name: &str, policy: BreakerPolicy) -> Arc<Mutex<CircuitBreaker>> {
        self.with(name, |e| {
            let breaker = e
                .breaker
                .get_or_insert_with(|| {
                    Arc::new(Mutex::new(CircuitBreaker::new(policy, Instant::now())))
                })
                .clone();
            breaker.lock().expect("breaker lock").set_policy(policy);
            breaker
        })
    }

    /// Force the breaker of `name` open, closed, or back to automatic.
    pub fn force_breaker(&self, name: &str, forced: Forced) -> Option<&'static str> {
        let entries = self.shared.entries.lock().expect("registry lock");
        let breaker = entries.get(name)?.breaker.clone()?;
        drop(entries);
        let mut breaker = breaker.lock().expect("breaker lock");
        if let Some(t) = breaker.force(forced, Instant::now()) {
            tracing::warn!(
                plugin = name,
                "circuit breaker forced {} -> {} by the operator",
                t.from.as_str(),
                t.to.as_str()
            );
        }
        Some(breaker.state().as_str())
    }

    /// Mark `name` as being loaded.
    pub fn loading(&self, name: &str) {
        self.change(name, |e| e.loading = true);
    }

    /// Put `route` in service for `name`; the previous version drains.
    pub fn serving(
        &self,
        name: &str,
        route: Arc<Route>,
        subjects: Vec<String>,
        mode: &str,
        cached: bool,
    ) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        if cached {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.compiled.fetch_add(1, Ordering::Relaxed);
        }
        self.report_to(&route.metrics);
        self.change(name, |e| {
            if let Some(old) = e.current.replace(route) {
                e.retired.push(Arc::downgrade(&old));
            }
            e.subjects = subjects;
            e.mode = mode.to_string();
            e.loaded_at = Some(SystemTime::now());
            e.error = None;
            e.loading = false;
        });
    }

    /// A load found the same files as the serving version.
    pub fn loading_done_unchanged(&self, name: &str) {
        self.change(name, |e| e.loading = false);
    }

    /// Record a failed load of `name`.
    pub fn failed(&self, name: &str, error: String) {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
        self.change(name, |e| {
            e.error = Some(error);
            e.loading = false;
        });
    }

    /// `name` was removed: its version drains, then the entry disappears.
    pub fn removed(&self, name: &str) {
        self.change(name, |e| {
            if let Some(old) = e.current.take() {
                e.retired.push(Arc::downgrade(&old));
            }
            e.error = None;
            e.loading = false;
        });
        if let Some(metrics) = self.shared.metrics.get() {
            metrics.plugin_removed(name);
        }
    }

    /// Status of every plugin.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        let mut entries = self.shared.entries.lock().expect("registry lock");
        entries.values_mut().for_each(Entry::prune);
        entries.retain(|_, e| e.state().is_some());
        self.shared.publish(&entries);
        entries
            .iter()
            .map(|(name, e)| {
                let state = e.state().unwrap_or("failed");
                PluginStatus {
                    name: name.clone(),
                    version: e.current.as_ref().map(|r| r.tag.version.to_string()),
                    state: state.into(),
                    error: e.error.clone(),
                    subjects: e.subjects.clone(),
                    mode: e.mode.clone(),
                    loaded_at: e
                        .loaded_at
                        .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                    draining: e
                        .retired
                        .iter()
                        .filter_map(Weak::upgrade)
                        .map(|r| r.tag.version.to_string())
                        .collect(),
                    breaker: e
                        .breaker
                        .as_ref()
                        .map(|b| {
                            let b = b.lock().expect("breaker lock");
                            match b.forced() {
                                Forced::Auto => b.state().as_str().to_string(),
                                _ => format!("forced-{}", b.state().as_str()),
                            }
                        })
                        .unwrap_or_else(|| "closed".into()),
                }
            })
            .collect()
    }

    /// Counters of `name`, if known.
    pub fn stats(&self, name: &str) -> Option<StatsSnapshot> {
        let entries = self.shared.entries.lock().expect("registry lock");
        entries.get(name).map(|e| e.stats.snapshot())
    }

    /// Host-wide reload counters.
    pub fn counters(&self) -> ReloadCounters {
        ReloadCounters {
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            compiled: self.compiled.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
        }
    }
}
