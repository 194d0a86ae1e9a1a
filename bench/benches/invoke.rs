//! Criterion: per-event instantiate + call. `bare` is wasmtime alone (same
//! engine configuration and component, minimal store); `sluice` is the host's
//! own per-event path (`engine::invoke`, fresh instance). Their ratio is the
//! issue's "fresh instance <= 1.5x bare" bar.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_bench::inproc::Floor;

fn invoke(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let noop = std::fs::read(sluice_e2e::plugin_wasm("noop")).unwrap();
    let floor = Floor::new(&noop, &[]).unwrap();
    let mut group = c.benchmark_group("instantiate+call noop");
    group.bench_function("bare wasmtime", |b| {
        b.to_async(&rt)
            .iter(|| async { floor.bare_call().await.unwrap() })
    });
    group.bench_function("sluice invoke (fresh instance)", |b| {
        b.to_async(&rt)
            .iter(|| async { floor.sluice_call().await.unwrap() })
    });
    group.finish();

    let enrich = std::fs::read(sluice_e2e::plugin_wasm("enrich")).unwrap();
    let floor = Floor::new(&enrich, &["bench.enriched.>"]).unwrap();
    c.bench_function("sluice invoke enrich (parse, enrich, publish)", |b| {
        b.to_async(&rt)
            .iter(|| async { floor.sluice_call().await.unwrap() })
    });
}

criterion_group!(benches, invoke);
criterion_main!(benches);
