//! The wasmtime side of the host: one shared [`wasmtime::Engine`] configured
//! for untrusted, short-lived plugin instances.
//!
//! Why these settings:
//! - the pooling allocator pre-reserves instance, memory and table slots, so a
//!   fresh instance per event costs a few microseconds (copy-on-write memory
//!   images make data segments free to reset);
//! - a released slot keeps the pages its instance dirtied resident and copies
//!   the image back over just those (found with Linux's `PAGEMAP_SCAN`, 6.7
//!   and later) instead of `madvise`-ing the whole memory away: the next
//!   instance of the same plugin then writes to pages that are already
//!   mapped instead of taking a page fault per page. An interpreter
//!   (componentize-py, componentize-js) dirties a few MiB of its snapshot per
//!   event, so this is most of what a fresh instance of one spends in the
//!   kernel; a Rust plugin dirties a few pages. See [`KEEP_RESIDENT_MEMORY`].
//! - epoch interruption bounds CPU time per event without the per-instruction
//!   cost of fuel: a background ticker increments the epoch, and each store
//!   checks its own deadline at every tick (see [`invoke`]);
//! - async calls run plugin code on fibers inside tokio tasks, and the epoch
//!   callback consults the [`governor`] at each tick, so a busy plugin can
//!   neither monopolise a worker thread nor crowd out short events.
//!
//! The pool is sized from the configured limits: `max_instances` slots (plus
//! a few for load-time smoke tests), each big enough for the largest memory,
//! table and core-instance count any plugin may have. The dispatcher never
//! runs more than `max_instances` invocations (further events wait), so a
//! slot is always free when an invocation starts.

pub mod cache;
pub mod component;
pub mod governor;
pub mod invoke;
mod ticker;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use governor::CpuGovernor;
pub use ticker::EpochTicker;

/// Pool slots beyond `max_instances`, for smoke-instantiating plugins while loading.
pub const SMOKE_SLOTS: u32 = 4;
/// Linear memories per component a pool slot holds (a Rust component has one).
const MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables per component a pool slot holds (a Rust component has two or three).
const TABLES_PER_COMPONENT: u32 = 4;
/// Dirty linear-memory bytes a released pool slot keeps resident (reset by
/// copying the image back, not by `madvise`), per memory. Only pages the
/// instance actually wrote count, so a Rust plugin keeps a few pages per slot
/// and an interpreter plugin its per-event working set (a few MiB); at most
/// this much per slot that has run an instance.
pub const KEEP_RESIDENT_MEMORY: usize = 16 << 20;
/// Table bytes a released pool slot resets with `memset` instead of
/// `madvise` (an interpreter's function table is tens of KiB).
pub const KEEP_RESIDENT_TABLE: usize = 256 << 10;

/// Sizing of the shared engine, derived from the host configuration.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Most plugin instances alive at once across all plugins. The pool is
    /// sized for this; the dispatcher never runs more (it waits instead).
    pub max_instances: u32,
    /// Largest linear memory any plugin may grow to, in bytes.
    pub max_memory_bytes: usize,
    /// Largest table any plugin may have, in elements.
    pub max_table_elements: usize,
    /// Most core instances any plugin instance may create.
    pub max_core_instances: u32,
    /// How often the epoch advances; the granularity of per-event time limits.
    pub epoch_tick: Duration,
    /// Cores' worth of CPU that long-running invocations get, together, while
    /// short events are flowing (see [`governor`]).
    pub background_cpu_share: f64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_instances: 256,
            max_memory_bytes: 64 << 20,
            max_table_elements: 20_000,
            max_core_instances: 16,
            epoch_tick: Duration::from_millis(10),
            background_cpu_share: governor::DEFAULT_BACKGROUND_SHARE,
        }
    }
}

/// How many instances of each kind the pool holds, live, right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Component instances (one per running invocation).
    pub component_instances: u64,
    /// Core instances.
    pub core_instances: u64,
    /// Linear memories.
    pub memories: usize,
}

/// Failure to build the engine (for example, the pool cannot reserve memory).
#[derive(Debug, Error)]
#[error(
    "cannot create the WebAssembly engine: {source:#}. Lower max_instances or max_memory in the host config"
)]
pub struct EngineError {
    #[source]
    source: wasmtime::Error,
}

/// The shared engine plus the thread that advances its epoch.
///
/// Clone-cheap; dropping the last clone stops the ticker.
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
    settings: Arc<EngineSettings>,
    governor: Arc<CpuGovernor>,
    _ticker: Arc<EpochTicker>,
}

impl WasmEngine {
    /// Build the engine with the pooling allocator sized from `settings`.
    pub fn new(settings: EngineSettings) -> Result<Self, EngineError> {
        // Keeping dirty pages resident needs PAGEMAP_SCAN (Linux 6.7+):
        // without it wasmtime would reset the low KEEP_RESIDENT_MEMORY bytes
        // of every memory by hand, touched or not, which costs more than
        // the page faults it saves.
        let keep_resident = PoolingAllocationConfig::is_pagemap_scan_available();
        let engine = Engine::new(&engine_config(&settings, keep_resident))
            .map_err(|source| EngineError { source })?;
        let ticker = EpochTicker::start(engine.clone(), settings.epoch_tick);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let governor = CpuGovernor::new(settings.epoch_tick, cores, settings.background_cpu_share);
        Ok(WasmEngine {
            engine,
            settings: Arc::new(settings),
            governor,
            _ticker: Arc::new(ticker),
        })
    }

    /// The CPU scheduler every invocation consults at each epoch tick.
    pub fn governor(&self) -> &Arc<CpuGovernor> {
        &self.governor
    }

    /// Live instances in the pool: all zero when nothing runs (nothing leaked).
    pub fn pool_usage(&self) -> PoolUsage {
        self.engine
            .pooling_allocator_metrics()
            .map(|m| PoolUsage {
                component_instances: m.component_instances(),
                core_instances: m.core_instances(),
                memories: m.memories(),
            })
            .unwrap_or_default()
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The settings the engine was built with.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }
}

fn engine_config(settings: &EngineSettings, keep_resident: bool) -> Config {
    let slots = settings.max_instances.max(1) + SMOKE_SLOTS;
    let core_instances = settings.max_core_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    // Every slot can hold the largest plugin the limits allow, so a plugin
    // within its limits never finds the pool exhausted.
    pool.total_component_instances(slots)
        .total_core_instances(slots * core_instances)
        .max_core_instances_per_component(core_instances)
        .total_memories(slots * MEMORIES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .total_tables(slots * TABLES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .total_stacks(slots)
        .max_memory_size(settings.max_memory_bytes)
        .table_elements(settings.max_table_elements)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20);
    if keep_resident {
        pool.linear_memory_keep_resident(KEEP_RESIDENT_MEMORY.min(settings.max_memory_bytes))
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            .pagemap_scan(Enabled::Yes);
    }

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_init_cow(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .max_wasm_stack(1 << 20)
        // No plugin runs guests concurrently within one store (the contract
        // is synchronous, one event per call): without it a call takes the
        // plain fiber path instead of the task machinery of async lifts.
        .concurrency_support(false);
    config
}
