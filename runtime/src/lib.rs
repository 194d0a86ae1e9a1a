//! sluice: a host that routes NATS events to sandboxed WebAssembly consumer
//! plugins, and owns their delivery (retries, idempotency keys, the outbox).
//!
//! The binary (`main.rs`) is a thin shell over [`cli`]; everything else is a
//! library so end-to-end tests drive the real host in-process.

pub mod cli;
pub mod config;
pub mod contract;
pub mod delivery;
pub mod dispatch;
pub mod dlq;
pub mod engine;
pub mod host;
pub mod limits;
pub mod manifest;
pub mod nats;
pub mod registry;
pub mod service;
pub mod subject;
pub mod telemetry;
pub mod trigger;
