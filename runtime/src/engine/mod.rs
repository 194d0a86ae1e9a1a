//! The wasmtime side of the host: one shared [`wasmtime::Engine`] configured
//! for untrusted, short-lived plugin instances.
//!
//! Why these settings:
//! - the pooling allocator pre-reserves instance, memory and table slots, so a
//!   fresh instance per event costs a few microseconds (copy-on-write memory
//!   images make data segments free to reset);
//! - epoch interruption bounds CPU time per event without the per-instruction
//!   cost of fuel: a background ticker increments the epoch, and each store
//!   checks its own deadline at every tick (see [`invoke`]);
//! - async calls run plugin code on fibers inside tokio tasks, and the epoch
//!   callback yields back to tokio at each tick, so a busy plugin cannot
//!   monopolise a worker thread.

pub mod bindings;
pub mod cache;
pub mod component;
pub mod invoke;
mod ticker;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use ticker::EpochTicker;

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
    /// How often the epoch advances; the granularity of per-event time limits.
    pub epoch_tick: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_instances: 256,
            max_memory_bytes: 64 << 20,
            max_table_elements: 20_000,
            epoch_tick: Duration::from_millis(10),
        }
    }
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
    _ticker: Arc<EpochTicker>,
}

impl WasmEngine {
    /// Build the engine with the pooling allocator sized from `settings`.
    pub fn new(settings: EngineSettings) -> Result<Self, EngineError> {
        let engine =
            Engine::new(&engine_config(&settings)).map_err(|source| EngineError { source })?;
        let ticker = EpochTicker::start(engine.clone(), settings.epoch_tick);
        Ok(WasmEngine {
            engine,
            settings: Arc::new(settings),
            _ticker: Arc::new(ticker),
        })
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

fn engine_config(settings: &EngineSettings) -> Config {
    let instances = settings.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    // A Rust wasip2 component has one main core instance plus a few small
    // shim instances; memories and tables are one or two per component.
    pool.total_component_instances(instances)
        .total_core_instances(instances * 8)
        .max_core_instances_per_component(16)
        .total_memories(instances * 2)
        .max_memories_per_component(2)
        .total_tables(instances * 4)
        .max_tables_per_component(4)
        .total_stacks(instances)
        .max_memory_size(settings.max_memory_bytes)
        .table_elements(settings.max_table_elements)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_init_cow(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        .max_wasm_stack(1 << 20);
    config
}
