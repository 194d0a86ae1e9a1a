//! Fault isolation under load: a healthy plugin (`noop`) keeps its throughput
//! while a hostile plugin (plugins/hostile) misbehaves beside it, for every
//! misbehaviour (see `sluice_e2e::neighbours` for how it is measured).
//!
//! - `a_healthy_neighbour_keeps_its_throughput_beside_each_hostile_plugin`
//!   runs in CI (debug build, small samples, shared 2-core machines) and
//!   asserts a generous bound, [`CI_MIN_RATIO`].
//! - The exact figures come from the benchmark harness in release mode:
//!   `cargo run --release -p sluice-bench -- neighbours` (docs/benchmarks.md).
//!
//! This file holds a single test so nothing else runs beside it.

use sluice_e2e::neighbours::{report, run_phases};

/// The bound asserted in CI: no starvation, not fair share. A CPU-bound
/// hostile plugin (`loop`, `busy-wait`) is entitled to its share of the CPU
/// too: with two plugins both wanting CPU on a 2-core machine that also runs
/// nats-server and the publisher, the neighbour's fair share is about half its
/// solo throughput, and what it gets beside a CPU-bound hog depends on what
/// else the machine runs (47-49% seen on a quiet machine; 28-33% with two
/// compiles beside it, which failed a 30% bound). 15% holds under that load
/// and still fails a starved neighbour: a hog that held the instance pool or
/// the runtime's threads leaves it near 0%. The benchmark reports the real
/// figures in release mode.
const CI_MIN_RATIO: f64 = 0.15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_neighbour_keeps_its_throughput_beside_each_hostile_plugin() {
    let phases = run_phases(400, 1, CI_MIN_RATIO).await;
    let table = report(&phases);
    for phase in &phases {
        assert!(
            phase.ratio() >= CI_MIN_RATIO,
            "beside `{}` the neighbour kept only {:.0}% of its throughput (bound {:.0}%); all: {table}",
            phase.mode,
            phase.ratio() * 100.0,
            CI_MIN_RATIO * 100.0
        );
    }
}
