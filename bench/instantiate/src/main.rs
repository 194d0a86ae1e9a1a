//! `instantiate COMPONENT.wasm`: what one fresh instance of a sluice plugin
//! costs on wasmtime alone, with the pool settings of runtime/src/engine/mod.rs
//! (issue 14). Instantiates, calls `handle` once with a small event and drops
//! the store, N times (after 10 warm-up rounds), and prints µs per phase and
//! the process's RSS (current, peak). The sluice imports are stubbed.
//!
//! Knobs (environment): N (iterations, 300); CWASM=path (compile once and
//! write it, exit; later runs load it with `deserialize_file`, so compile
//! memory stays out of the figures); POOL=0 (on-demand allocator);
//! PAGEMAP=1, KEEP_MEM=bytes, KEEP_TABLE=bytes (resident slots, as the host
//! now sets them); DECOMMIT, MAX_UNUSED (pool batching and warm slots);
//! CALL=0 (instantiate only); HOLD=n (keep n instances alive: memory per
//! instance); IMPORTS=1 (list the component's imports); PERFMAP=1.
//! Profile with `perf record -e cpu-clock target/release/instantiate X.wasm`.

use std::time::Instant;
use wasmtime::component::{Component, Linker, ResourceTable, Val};
use wasmtime::*;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

struct S {
    wasi: WasiCtx,
    table: ResourceTable,
    lim: Lim,
}
struct Lim;
impl ResourceLimiter for Lim {
    fn memory_growing(&mut self, _c: usize, d: usize, _m: Option<usize>) -> Result<bool> {
        Ok(d <= 64 << 20)
    }
    fn table_growing(&mut self, _c: usize, d: usize, _m: Option<usize>) -> Result<bool> {
        Ok(d <= 20000)
    }
    fn instances(&self) -> usize {
        16
    }
}
impl WasiView for S {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}
fn envn(k: &str, d: u64) -> u64 {
    env(k).map(|v| v.parse().unwrap()).unwrap_or(d)
}
fn rss() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let f = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<f64>()
            .unwrap()
            / 1024.0
    };
    (f("VmRSS:"), f("VmHWM:"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let path = std::env::args().nth(1).unwrap();
    let n = envn("N", 300) as usize;
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .cranelift_opt_level(OptLevel::Speed)
        .max_wasm_stack(1 << 20);
    if env("PERFMAP").is_some() {
        config.profiler(ProfilingStrategy::PerfMap);
    }
    if env("PARALLEL").as_deref() == Some("0") {
        config.parallel_compilation(false);
    }
    if env("POOL").as_deref() != Some("0") {
        let slots = envn("SLOTS", 260) as u32;
        let mut pool = PoolingAllocationConfig::new();
        let ci = 16;
        pool.total_component_instances(slots)
            .total_core_instances(slots * ci)
            .max_core_instances_per_component(ci)
            .total_memories(slots * 2)
            .max_memories_per_component(2)
            .total_tables(slots * 4)
            .max_tables_per_component(4)
            .total_stacks(slots)
            .max_memory_size(64 << 20)
            .table_elements(20000)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20);
        pool.linear_memory_keep_resident(envn("KEEP_MEM", 0) as usize);
        pool.table_keep_resident(envn("KEEP_TABLE", 0) as usize);
        if env("PAGEMAP").as_deref() == Some("1") {
            pool.pagemap_scan(Enabled::Auto);
        }
        if let Some(b) = env("DECOMMIT") {
            pool.decommit_batch_size(b.parse().unwrap());
        }
        if let Some(m) = env("MAX_UNUSED") {
            pool.max_unused_warm_slots(m.parse().unwrap());
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    let engine = Engine::new(&config)?;
    println!("rss after engine: {:?}", rss());
    let bytes = std::fs::read(&path)?;
    let t = Instant::now();
    let component = if let Some(cw) = env("CWASM") {
        if !std::path::Path::new(&cw).exists() {
            let c = Component::new(&engine, &bytes)?;
            std::fs::write(&cw, c.serialize()?)?;
            println!("compiled+serialized in {:?}, rss {:?}", t.elapsed(), rss());
            std::process::exit(0);
        }
        unsafe { Component::deserialize_file(&engine, &cw)? }
    } else {
        Component::new(&engine, &bytes)?
    };
    println!("compile/load {:?}, rss {:?}", t.elapsed(), rss());
    drop(bytes);
    let mut linker: Linker<S> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    if env("IMPORTS").is_some() {
        for (n, _) in component.component_type().imports(&engine) {
            println!("import {n}");
        }
    }
    if env("NOSTUB").is_some() {
        linker.instantiate_pre(&component)?;
    }
    for (n, item) in component.component_type().imports(&engine) {
        if !n.starts_with("sluice:") {
            continue;
        }
        if let wasmtime::component::types::ComponentItem::ComponentInstance(ty) = item.ty {
            let mut inst = linker.instance(n)?;
            for (f, it) in ty.exports(&engine) {
                if let wasmtime::component::types::ComponentItem::ComponentFunc(_) = it.ty {
                    inst.func_new(f, |_, _, _, _| Ok(()))?;
                }
            }
        }
    }
    let pre = linker.instantiate_pre(&component)?;
    let ver = ["0.2.0", "0.1.0"]
        .iter()
        .find(|v| {
            component
                .get_export_index(None, &format!("sluice:plugin/handler@{v}"))
                .is_some()
        })
        .unwrap();
    let iface = component
        .get_export_index(None, &format!("sluice:plugin/handler@{ver}"))
        .unwrap();
    let fidx = component.get_export_index(Some(&iface), "handle").unwrap();
    let event = Val::Record(vec![
        ("subject".into(), Val::String("bench.orders".into())),
        (
            "payload".into(),
            Val::List(b"{\"id\":1}".iter().map(|b| Val::U8(*b)).collect()),
        ),
        ("headers".into(), Val::List(vec![])),
        ("idempotency-key".into(), Val::String("k".into())),
        ("attempt".into(), Val::U32(1)),
        (
            "delivery".into(),
            Val::Record(vec![
                ("stream".into(), Val::Option(None)),
                ("sequence".into(), Val::Option(None)),
                ("published-at-ms".into(), Val::Option(None)),
                ("reply-to".into(), Val::Option(None)),
            ]),
        ),
    ]);
    let call = env("CALL").as_deref() != Some("0");
    let mut t_inst = 0f64;
    let mut t_call = 0f64;
    let mut t_drop = 0f64;
    let hold = envn("HOLD", 0) as usize;
    let mut held = Vec::new();
    let total = Instant::now();
    for i in 0..n {
        if i == 10 {
            t_inst = 0.0;
            t_call = 0.0;
            t_drop = 0.0;
        }
        let mut store = Store::new(
            &engine,
            S {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                lim: Lim,
            },
        );
        store.limiter(|s| &mut s.lim);
        store.set_epoch_deadline(1 << 40);
        let t = Instant::now();
        let inst = pre.instantiate_async(&mut store).await?;
        t_inst += t.elapsed().as_secs_f64();
        if call {
            let t = Instant::now();
            let f = inst.get_func(&mut store, &fidx).unwrap();
            let mut res = [Val::Bool(false)];
            f.call_async(&mut store, &[event.clone()], &mut res).await?;
            f.post_return_async(&mut store).await?;
            t_call += t.elapsed().as_secs_f64();
        }
        if held.len() < hold {
            held.push(store);
            continue;
        }
        let t = Instant::now();
        drop(store);
        t_drop += t.elapsed().as_secs_f64();
        if i == 0 {
            println!("rss after first instance: {:?}", rss());
        }
    }
    let m = (n - 10) as f64;
    println!(
        "per instance: inst {:.1} us, call {:.1} us, drop {:.1} us; total {:.1} us/iter; rss {:?}",
        t_inst / m * 1e6,
        t_call / m * 1e6,
        t_drop / m * 1e6,
        total.elapsed().as_secs_f64() / n as f64 * 1e6,
        rss()
    );
    Ok(())
}
