//! Prometheus metrics of the host, in one [`Metrics`] handle.
//!
//! Why a handle with named methods rather than metric objects spread through
//! the code: the dispatch, reload and sandbox code each report what happened
//! in one line (`metrics.event_handled(plugin, outcome, elapsed)`), while the
//! metric names, labels, buckets and help texts live here, next to the
//! reference in docs/operations.md. Every per-plugin series is created (at
//! zero) when the plugin is registered, so a dashboard sees a counter before
//! it first moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// `Content-Type` of [`Metrics::render`]: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Outcome label of a successful attempt.
pub const OK: &str = "ok";

/// Values of the `limit` label of `sluice_limit_violations_total`.
pub const LIMITS: &[&str] = &[
    "time", "memory", "stack", "resource", "payload", "publish", "log",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    plugin: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateTransitionLabels {
    plugin: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    plugin: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapabilityLabels {
    plugin: String,
    capability: String,
}

/// Values of the `capability` label of `sluice_capability_refusals_total`.
pub const CAPABILITIES: &[&str] = &["publish", "state", "request", "http"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type Histograms = Family<PluginLabels, Histogram, fn() -> Histogram>;

fn handler_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn instantiate_histogram() -> Histogram {
    // 10 µs .. ~0.3 s
    Histogram::new(exponential_buckets(0.000_01, 2.0, 16))
}

struct Inner {
    registry: Registry,
    events_received: Family<PluginLabels, Counter>,
    events_handled: Family<OutcomeLabels, Counter>,
    handler_duration: Histograms,
    instantiate_duration: Histograms,
    in_flight: Family<PluginLabels, Gauge>,
    retries: Family<PluginLabels, Counter>,
    dead_lettered: Family<PluginLabels, Counter>,
    dead_letter_failures: Family<PluginLabels, Counter>,
    dedup_hits: Family<PluginLabels, Counter>,
    published: Family<PluginLabels, Counter>,
    reloads: Family<PluginLabels, Counter>,
    reload_failures: Family<PluginLabels, Counter>,
    limit_violations: Family<LimitLabels, Counter>,
    plugins: Family<StateLabels, Gauge>,
    nats_connected: Gauge,
    nats_reconnects: Counter,
    shutdown_requeued: Counter,
    breaker_state: Family<PluginLabels, Gauge>,
    breaker_transitions: Family<StateTransitionLabels, Counter>,
    core_dropped: Family<PluginLabels, Counter>,
    events_lost: Family<PluginLabels, Counter>,
    consumers_lost: Family<PluginLabels, Counter>,
    ack_floor: Family<PluginLabels, Gauge>,
    publish_refused: Family<PluginLabels, Counter>,
    capability_refusals: Family<CapabilityLabels, Counter>,
    connected: AtomicBool,
    ever_connected: AtomicBool,
}

/// The host's metrics; clone-cheap, shared by every part of the host.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A fresh set of metrics (one per host).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let events_received = Family::default();
        registry.register(
            "events_received",
            "Events received from NATS per plugin (JetStream redeliveries included)",
            events_received.clone(),
        );
        let events_handled = Family::default();
        registry.register(
            "events_handled",
            "Handler attempts per plugin and outcome (ok, or the failure class)",
            events_handled.clone(),
        );
        let handler_duration = Histograms::new_with_constructor(handler_histogram);
        registry.register_with_unit(
            "handler_duration",
            "Time per attempt: instantiate, handle and commit the outbox",
            Unit::Seconds,
            handler_duration.clone(),
        );
        let instantiate_duration = Histograms::new_with_constructor(instantiate_histogram);
        registry.register_with_unit(
            "instantiate_duration",
            "Time to instantiate a fresh plugin instance for one attempt",
            Unit::Seconds,
            instantiate_duration.clone(),
        );
        let in_flight = Family::default();
        registry.register(
            "events_in_flight",
            "Attempts running right now per plugin",
            in_flight.clone(),
        );
        let retries = Family::default();
        registry.register(
            "retries",
            "Retries scheduled (core: host timer; JetStream: Nak with delay)",
            retries.clone(),
        );
        let dead_lettered = Family::default();
        registry.register(
            "dead_lettered",
            "Events whose dead letter the DLQ stream acknowledged",
            dead_lettered.clone(),
        );
        let dead_letter_failures = Family::default();
        registry.register(
            "dead_letter_failures",
            "Dead-letter publishes that failed (JetStream events are redelivered, core events lost)",
            dead_letter_failures.clone(),
        );
        let dedup_hits = Family::default();
        registry.register(
            "dedup_hits",
            "Deliveries skipped because their idempotency key had already completed",
            dedup_hits.clone(),
        );
        let published = Family::default();
        registry.register(
            "published",
            "Messages published from committed outboxes",
            published.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "plugin_reloads",
            "New plugin versions put in service by hot reload",
            reloads.clone(),
        );
        let reload_failures = Family::default();
        registry.register(
            "plugin_reload_failures",
            "Plugin versions that failed to load on reload (the old version keeps serving)",
            reload_failures.clone(),
        );
        let limit_violations = Family::default();
        registry.register(
            "limit_violations",
            "Sandbox limits a plugin hit, by limit (time, memory, stack, resource, payload, publish; log = attempts whose log lines were cut)",
            limit_violations.clone(),
        );
        let plugins = Family::default();
        registry.register(
            "plugins",
            "Plugins found in the plugin folder, by state",
            plugins.clone(),
        );
        let nats_connected = Gauge::default();
        registry.register(
            "nats_connected",
            "1 while the NATS connection is up, 0 while it is down",
            nats_connected.clone(),
        );
        let nats_reconnects = Counter::default();
        registry.register(
            "nats_reconnects",
            "Times the NATS connection was re-established after being lost",
            nats_reconnects.clone(),
        );
        let shutdown_requeued = Counter::default();
        registry.register(
            "shutdown_requeued",
            "JetStream messages handed back (Nak) at shutdown instead of being handled",
            shutdown_requeued.clone(),
        );
        let breaker_state = Family::<PluginLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker per plugin: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        let breaker_transitions = Family::<StateTransitionLabels, Counter>::default();
        registry.register(
            "breaker_transitions",
            "Circuit breaker state changes per plugin and new state",
            breaker_transitions.clone(),
        );
        let core_dropped = Family::<PluginLabels, Counter>::default();
        registry.register(
            "core_dropped",
            "Core NATS events dropped because the plugin's buffer was full (slow consumer)",
            core_dropped.clone(),
        );
        let events_lost = Family::<PluginLabels, Counter>::default();
        registry.register(
            "events_lost",
            "Core NATS events given up on whose dead letter the DLQ never confirmed before the host stopped",
            events_lost.clone(),
        );
        let consumers_lost = Family::<PluginLabels, Counter>::default();
        registry.register(
            "consumers_lost",
            "Times a plugin's JetStream consumer (or its stream) vanished under the running host and was recreated",
            consumers_lost.clone(),
        );
        let ack_floor = Family::<PluginLabels, Gauge>::default();
        registry.register(
            "jetstream_ack_floor",
            "The stream sequence up to which a plugin's JetStream consumer has every message acknowledged, as last seen (every 2 s); a consumer recreated under the running host resumes after it",
            ack_floor.clone(),
        );
        let publish_refused = Family::<PluginLabels, Counter>::default();
        registry.register(
            "publish_refused",
            "Publishes a plugin attempted that the host refused (not granted, reserved, invalid or over a limit)",
            publish_refused.clone(),
        );
        let capability_refusals = Family::<CapabilityLabels, Counter>::default();
        registry.register(
            "capability_refusals",
            "Uses of a capability the host refused a plugin, per capability (publish, state, request, http): not granted, over a limit, a private address",
            capability_refusals.clone(),
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("build_info", "The sluice version (value 1)", build);
        Metrics {
            inner: Arc::new(Inner {
                registry,
                events_received,
                events_handled,
                handler_duration,
                instantiate_duration,
                in_flight,
                retries,
                dead_lettered,
                dead_letter_failures,
                dedup_hits,
                published,
                reloads,
                reload_failures,
                limit_violations,
                plugins,
                nats_connected,
                nats_reconnects,
                shutdown_requeued,
                breaker_state,
                breaker_transitions,
                core_dropped,
                events_lost,
                consumers_lost,
                ack_floor,
                publish_refused,
                capability_refusals,
                connected: AtomicBool::new(false),
                ever_connected: AtomicBool::new(false),
            }),
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry);
        out
    }

    /// Create every per-plugin series of `plugin` at zero.
    pub fn plugin_registered(&self, plugin: &str) {
        let i = &self.inner;
        let p = labels(plugin);
        drop(i.events_received.get_or_create(&p));
        drop(i.events_handled.get_or_create(&outcome(plugin, OK)));
        drop(i.handler_duration.get_or_create(&p));
        drop(i.instantiate_duration.get_or_create(&p));
        drop(i.in_flight.get_or_create(&p));
        drop(i.retries.get_or_create(&p));
        drop(i.dead_lettered.get_or_create(&p));
        drop(i.dead_letter_failures.get_or_create(&p));
        drop(i.dedup_hits.get_or_create(&p));
        drop(i.published.get_or_create(&p));
        drop(i.reloads.get_or_create(&p));
        drop(i.reload_failures.get_or_create(&p));
        drop(i.breaker_state.get_or_create(&p));
        drop(i.core_dropped.get_or_create(&p));
        drop(i.publish_refused.get_or_create(&p));
        for capability in CAPABILITIES {
            drop(
                i.capability_refusals
                    .get_or_create(&capability_labels(plugin, capability)),
            );
        }
        for limit in LIMITS {
            drop(
                i.limit_violations
                    .get_or_create(&limit_labels(plugin, limit)),
            );
        }
    }

    /// Hot-path handles for `plugin` (see [`PluginMetrics`]).
    pub fn for_plugin(&self, plugin: &str) -> PluginMetrics {
        let i = &self.inner;
        let p = labels(plugin);
        PluginMetrics {
            received: i.events_received.get_or_create(&p).clone(),
            handled_ok: i.events_handled.get_or_create(&outcome(plugin, OK)).clone(),
            handler_duration: i.handler_duration.get_or_create(&p).clone(),
            instantiate_duration: i.instantiate_duration.get_or_create(&p).clone(),
            in_flight: i.in_flight.get_or_create(&p).clone(),
            published: i.published.get_or_create(&p).clone(),
        }
    }

    /// An attempt of `plugin` finished with `outcome` ([`OK`] or a failure
    /// class name) after `elapsed`. A failure class that is a sandbox limit
    /// (`deadline-exceeded`, `out-of-memory`, `stack-overflow`) also counts
    /// as a limit violation.
    pub fn event_handled(&self, plugin: &str, outcome_label: &str, elapsed: Duration) {
        let i = &self.inner;
        i.events_handled
            .get_or_create(&outcome(plugin, outcome_label))
            .inc();
        i.handler_duration
            .get_or_create(&labels(plugin))
            .observe(elapsed.as_secs_f64());
        let limit = match outcome_label {
            "deadline-exceeded" => Some("time"),
            "out-of-memory" => Some("memory"),
            "stack-overflow" => Some("stack"),
            "resource-limit" => Some("resource"),
            "payload-too-large" => Some("payload"),
            "publish-limit" => Some("publish"),
            _ => None,
        };
        if let Some(limit) = limit {
            self.limit_violation(plugin, limit);
        }
    }

    /// An attempt of `plugin` had `refused` publishes refused and
    /// `log_dropped` log lines dropped (per-event cap or rate limit).
    pub fn sandbox_refusals(&self, plugin: &str, refused: u32, log_dropped: u32) {
        if refused > 0 {
            self.inner
                .publish_refused
                .get_or_create(&labels(plugin))
                .inc_by(refused.into());
        }
        if log_dropped > 0 {
            self.limit_violation(plugin, "log");
        }
    }

    /// An attempt of `plugin` had uses of capabilities refused:
    /// `(capability, count)` pairs, zero counts skipped.
    pub fn capability_refusals(&self, plugin: &str, refused: &[(&str, u32)]) {
        for (capability, n) in refused.iter().filter(|(_, n)| *n > 0) {
            self.inner
                .capability_refusals
                .get_or_create(&capability_labels(plugin, capability))
                .inc_by((*n).into());
        }
    }

    /// A retry of a `plugin` event was scheduled.
    pub fn retry_scheduled(&self, plugin: &str) {
        self.inner.retries.get_or_create(&labels(plugin)).inc();
    }

    /// A `plugin` event was dead-lettered (`ok`) or its DLQ publish failed.
    pub fn dead_lettered(&self, plugin: &str, ok: bool) {
        let family = if ok {
            &self.inner.dead_lettered
        } else {
            &self.inner.dead_letter_failures
        };
        family.get_or_create(&labels(plugin)).inc();
    }

    /// A delivery of an already completed key was skipped.
    pub fn dedup_hit(&self, plugin: &str) {
        self.inner.dedup_hits.get_or_create(&labels(plugin)).inc();
    }

    /// The circuit breaker of `plugin` moved to `to` (`closed`, `half-open`, `open`).
    pub fn breaker_transition(&self, plugin: &str, to: &str) {
        let level = match to {
            "open" => 2,
            "half-open" => 1,
            _ => 0,
        };
        self.inner
            .breaker_state
            .get_or_create(&labels(plugin))
            .set(level);
        self.inner
            .breaker_transitions
            .get_or_create(&StateTransitionLabels {
                plugin: plugin.to_string(),
                to: to.to_string(),
            })
            .inc();
    }

    /// A core event of `plugin` was dropped: its buffer was full.
    pub fn core_dropped(&self, plugin: &str) {
        self.inner.core_dropped.get_or_create(&labels(plugin)).inc();
    }

    /// A core event of `plugin` was lost: given up on, and its dead letter
    /// never confirmed before the host stopped.
    pub fn event_lost(&self, plugin: &str) {
        self.inner.events_lost.get_or_create(&labels(plugin)).inc();
    }

    /// `plugin`'s JetStream consumer vanished under the running host.
    pub fn consumer_lost(&self, plugin: &str) {
        self.inner
            .consumers_lost
            .get_or_create(&labels(plugin))
            .inc();
    }

    /// `plugin`'s JetStream consumer has every message up to stream
    /// sequence `sequence` acknowledged.
    pub fn ack_floor(&self, plugin: &str, sequence: u64) {
        self.inner
            .ack_floor
            .get_or_create(&labels(plugin))
            .set(i64::try_from(sequence).unwrap_or(i64::MAX));
    }

    /// `plugin` was removed: its gauges go (a counter keeps its total, as
    /// Prometheus expects; a stale gauge would read as a live value).
    pub fn plugin_removed(&self, plugin: &str) {
        self.inner.ack_floor.remove(&labels(plugin));
    }

    /// Hot reload put a new version of `plugin` in service.
    pub fn plugin_reloaded(&self, plugin: &str) {
        self.inner.reloads.get_or_create(&labels(plugin)).inc();
    }

    /// Hot reload failed to load a new version of `plugin`.
    pub fn plugin_reload_failed(&self, plugin: &str) {
        self.inner
            .reload_failures
            .get_or_create(&labels(plugin))
            .inc();
    }

    /// `plugin` hit sandbox limit `limit` (one of [`LIMITS`]).
    pub fn limit_violation(&self, plugin: &str, limit: &str) {
        self.inner
            .limit_violations
            .get_or_create(&limit_labels(plugin, limit))
            .inc();
    }

    /// Set how many plugins are in each state (e.g. serving, failed).
    pub fn plugin_states(&self, counts: &[(&str, i64)]) {
        for (state, count) in counts {
            self.inner
                .plugins
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(*count);
        }
    }

    /// The NATS connection went up or down; an up after the first is a reconnect.
    pub fn nats_connected(&self, connected: bool) {
        let i = &self.inner;
        i.connected.store(connected, Ordering::SeqCst);
        i.nats_connected.set(i64::from(connected));
        if connected && i.ever_connected.swap(true, Ordering::SeqCst) {
            i.nats_reconnects.inc();
        }
    }

    /// Whether the NATS connection is up.
    pub fn is_nats_connected(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst)
    }

    /// A JetStream message was handed back at shutdown.
    pub fn shutdown_requeued(&self) {
        self.inner.shutdown_requeued.inc();
    }
}

/// Counts one attempt in flight while alive.
#[must_use = "the attempt is in flight until the guard is dropped"]
pub struct InFlight(Gauge);

/// Handles on one plugin's hot-path metrics, created once per plugin
/// version so handling an event allocates no label and takes no map lock.
/// The handles share their values with the registry.
#[derive(Clone, Debug)]
pub struct PluginMetrics {
    received: Counter,
    handled_ok: Counter,
    handler_duration: Histogram,
    instantiate_duration: Histogram,
    in_flight: Gauge,
    published: Counter,
}

impl PluginMetrics {
    /// One event received from NATS.
    pub fn event_received(&self) {
        self.received.inc();
    }

    /// An attempt is starting; the returned guard counts it in flight until dropped.
    pub fn attempt_started(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// An attempt succeeded after `elapsed`.
    pub fn handled_ok(&self, elapsed: Duration) {
        self.handled_ok.inc();
        self.handler_duration.observe(elapsed.as_secs_f64());
    }

    /// A fresh instance took `elapsed` to instantiate.
    pub fn instantiated(&self, elapsed: Duration) {
        self.instantiate_duration.observe(elapsed.as_secs_f64());
    }

    /// `count` outbox messages were published.
    pub fn published(&self, count: u64) {
        self.published.inc_by(count);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn labels(plugin: &str) -> PluginLabels {
    PluginLabels {
        plugin: plugin.to_string(),
    }
}

fn outcome(plugin: &str, outcome: &str) -> OutcomeLabels {
    OutcomeLabels {
        plugin: plugin.to_string(),
        outcome: outcome.to_string(),
    }
}

fn limit_labels(plugin: &str, limit: &str) -> LimitLabels {
    LimitLabels {
        plugin: plugin.to_string(),
        limit: limit.to_string(),
    }
}

fn capability_labels(plugin: &str, capability: &str) -> CapabilityLabels {
    CapabilityLabels {
        plugin: plugin.to_string(),
        capability: capability.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_exist_at_zero_and_move() {
        let m = Metrics::new();
        m.plugin_registered("orders");
        let text = m.render();
        assert!(
            text.contains("sluice_plugin_reloads_total{plugin=\"orders\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sluice_limit_violations_total{plugin=\"orders\",limit=\"publish\"} 0"),
            "{text}"
        );
        assert!(text.contains("sluice_nats_connected 0"), "{text}");
        m.for_plugin("orders").event_received();
        m.event_handled("orders", "deadline-exceeded", Duration::from_millis(3));
        m.nats_connected(true);
        m.nats_connected(false);
        m.nats_connected(true);
        let text = m.render();
        assert!(
            text.contains("sluice_events_received_total{plugin=\"orders\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "sluice_events_handled_total{plugin=\"orders\",outcome=\"deadline-exceeded\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("sluice_limit_violations_total{plugin=\"orders\",limit=\"time\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_handler_duration_seconds_count{plugin=\"orders\"} 1"),
            "{text}"
        );
        assert!(text.contains("sluice_nats_reconnects_total 1"), "{text}");
        assert!(m.is_nats_connected());
    }

    #[test]
    fn plugin_handles_move_the_registered_series() {
        let m = Metrics::new();
        let h = m.for_plugin("orders");
        h.event_received();
        h.handled_ok(Duration::from_millis(1));
        h.published(3);
        let guard = h.attempt_started();
        let text = m.render();
        for line in [
            "sluice_events_received_total{plugin=\"orders\"} 1",
            "sluice_events_handled_total{plugin=\"orders\",outcome=\"ok\"} 1",
            "sluice_published_total{plugin=\"orders\"} 3",
            "sluice_events_in_flight{plugin=\"orders\"} 1",
            "sluice_handler_duration_seconds_count{plugin=\"orders\"} 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        drop(guard);
        assert!(
            m.render()
                .contains("sluice_events_in_flight{plugin=\"orders\"} 0")
        );
    }
}
