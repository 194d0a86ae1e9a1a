//! sluice-bench: measures the sluice host against plain async-nats consumers
//! doing the same job, side by side in one run, on a nats-server it starts
//! itself. See docs/benchmarks.md for the scenarios, what exactly each number
//! means, and the bars.
//!
//! The harness reuses the end-to-end test crate (`sluice-e2e`) for the
//! nats-server guard, the plugin build and plugin folders, and runs the real
//! host binary (built from runtime/src/main.rs as `sluice-bench-host`) as a
//! child process.

pub mod bars;
pub mod baseline;
pub mod faststream;
pub mod host;
pub mod inproc;
pub mod load;
pub mod report;
pub mod scenarios;
pub mod stats;
