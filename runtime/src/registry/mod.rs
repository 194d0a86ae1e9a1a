//! The plugins a host knows about: loading them from the folder
//! ([`loader`]), watching the folder for deploys ([`watcher`]), and the live
//! status of each plugin ([`Registry`]): which version serves, which older
//! versions still drain in-flight events, and why the last load failed.

pub mod loader;
pub mod watcher;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::delivery::breaker::{BreakerPolicy, CircuitBreaker, Forced};
use crate::dispatch::{PluginStats, Route, StatsSnapshot};
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

#[derive(Default)]
struct Entry {
    current: Option<Arc<Route>>,
    retired: Vec<Arc<Route>>,
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

/// Live plugin status, shared by the supervisor and readers.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<BTreeMap<String, Entry>>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    compiled: AtomicU64,
    cache_hits: AtomicU64,
}

impl Registry {
    fn with<R>(&self, name: &str, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut entries = self.entries.lock().expect("registry lock");
        f(entries.entry(name.to_string()).or_default())
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
        let entries = self.entries.lock().expect("registry lock");
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
        self.with(name, |e| e.loading = true);
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
        self.with(name, |e| {
            if let Some(old) = e.current.replace(route) {
                e.retired.push(old);
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
        self.with(name, |e| e.loading = false);
    }

    /// Record a failed load of `name`.
    pub fn failed(&self, name: &str, error: String) {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
        self.with(name, |e| {
            e.error = Some(error);
            e.loading = false;
        });
    }

    /// `name` was removed: its version drains, then the entry disappears.
    pub fn removed(&self, name: &str) {
        self.with(name, |e| {
            if let Some(old) = e.current.take() {
                e.retired.push(old);
            }
            e.error = None;
            e.loading = false;
        });
    }

    /// Status of every plugin.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        let mut entries = self.entries.lock().expect("registry lock");
        for e in entries.values_mut() {
            e.retired.retain(|r| r.in_flight() > 0);
        }
        entries.retain(|_, e| {
            e.current.is_some() || !e.retired.is_empty() || e.error.is_some() || e.loading
        });
        entries
            .iter()
            .map(|(name, e)| {
                let state = if e.current.is_some() {
                    "serving"
                } else if e.loading {
                    "loading"
                } else if !e.retired.is_empty() {
                    "draining"
                } else {
                    "failed"
                };
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
        let entries = self.entries.lock().expect("registry lock");
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
