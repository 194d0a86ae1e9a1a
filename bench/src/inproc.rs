//! Everything that touches sluice's engine internals, kept in this one module
//! so a signature change in `runtime/src/engine` (for example a new field of
//! `InvocationRequest`) is adapted here only.
//!
//! It measures, in-process and without NATS, the per-event cost floor the
//! issue's 1.5x bar is judged against:
//! - [`Floor::bare_call`]: bare wasmtime, the same component and the same
//!   engine configuration (sluice's own [`WasmEngine`]: pooling allocator,
//!   copy-on-write memory images, epoch interruption), a minimal store (an
//!   empty WASI context, no limiter, no deadline callback), `InstancePre`
//!   instantiate + call `handle`;
//! - [`Floor::sluice_call`]: sluice's per-event path [`invoke::invoke`]: a
//!   fresh `HostState` (WASI context, stdio capture, log sink, outbox,
//!   memory limiter), epoch deadline callback, timeout backstop, instantiate,
//!   call, outcome classification.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::contract::{self as types, Pre};
use sluice::engine::component::{self, CompiledPlugin};
use sluice::engine::invoke::{self, InvocationRequest, InvokeLimits};
use sluice::engine::{EngineSettings, WasmEngine};
use sluice::host::{LogBudget, PluginTag};
use sluice::subject::PublishGrants;
use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The smallest store a WASI component can run in.
pub struct BareState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: wasmtime_wasi_http::WasiHttpCtx,
}

impl wasmtime_wasi_http::WasiHttpView for BareState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// One component prepared both ways.
pub struct Floor {
    engine: WasmEngine,
    bare: Pre<BareState>,
    plugin: CompiledPlugin,
    event: types::Event,
    tag: PluginTag,
    grants: Arc<PublishGrants>,
    config: Arc<sluice::host::PluginConfig>,
    log_budget: Arc<LogBudget>,
    warm: std::sync::Mutex<Option<invoke::WarmInstance>>,
}

/// A representative event (the benchmark payload, no headers).
pub fn sample_event() -> types::Event {
    types::Event {
        subject: "bench.orders".into(),
        payload: crate::load::payload(1, 0).to_vec(),
        headers: Vec::new(),
        idempotency_key: "sha256:00112233445566778899aabbccddeeff".into(),
        attempt: 1,
        delivery: types::Delivery {
            stream: None,
            sequence: None,
            published_at_ms: None,
            reply_to: None,
        },
    }
}

impl Floor {
    /// Compile `wasm` for both paths on sluice's default engine settings.
    pub fn new(wasm: &[u8], publish: &[&str]) -> anyhow::Result<Floor> {
        let engine = WasmEngine::new(EngineSettings::default())?;
        let linker = sluice::host::linker(engine.engine())?;
        let plugin = component::compile(&engine, &linker, wasm)?;

        let component = Component::new(engine.engine(), wasm)?;
        let mut bare_linker: Linker<BareState> = Linker::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut bare_linker)?;
        // Linked like the host's (a 0.2.0 component's WASI imports are
        // resolved against both), never called by the floor's plugin.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut bare_linker)?;
        // The sluice imports (log, publish) trap if called; the floor is
        // measured with a plugin that calls neither.
        define_sluice_imports_as_traps(&mut bare_linker, &component)?;
        let version = &plugin.info.contract_version;
        let bare = Pre::new(version, bare_linker.instantiate_pre(&component)?)
            .map_err(|e| anyhow::anyhow!("the component is not a sluice consumer: {e:#}"))?;
        Ok(Floor {
            engine,
            bare,
            tag: PluginTag {
                name: "bench".into(),
                version: plugin.info.version.as_str().into(),
            },
            plugin,
            event: sample_event(),
            grants: Arc::new(PublishGrants::new(
                publish.iter().map(|s| s.to_string()).collect(),
            )),
            config: Arc::default(),
            log_budget: Arc::new(LogBudget::unlimited()),
            warm: std::sync::Mutex::new(None),
        })
    }

    /// Bare wasmtime: fresh store, instantiate, call `handle`.
    pub async fn bare_call(&self) -> anyhow::Result<()> {
        self.bare_instance().await.map(drop)
    }

    /// A fresh bare instance that has handled one event, kept alive.
    async fn bare_instance(&self) -> anyhow::Result<Store<BareState>> {
        let state = BareState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
        };
        let mut store = Store::new(self.engine.engine(), state);
        store.set_epoch_deadline(1 << 40);
        let consumer = self.bare.instantiate_async(&mut store).await?;
        consumer
            .handle(&mut store, &self.event)
            .await?
            .map_err(|e| anyhow::anyhow!("handler failed: {e:?}"))?;
        Ok(store)
    }

    /// sluice's per-event invocation (fresh instance).
    pub async fn sluice_call(&self) -> anyhow::Result<()> {
        let report = invoke::invoke(
            &self.engine,
            &self.plugin,
            InvocationRequest {
                event: &self.event,
                tag: &self.tag,
                cpu: None,
                started: None,
                grants: &self.grants,
                config: &self.config,
                state: None,
                requester: None,
                http: None,
                limits: InvokeLimits::default(),
                log_budget: &self.log_budget,
                keep_logs: false,
            },
        )
        .await;
        report
            .outcome
            .map_err(|f| anyhow::anyhow!("{}: {}", f.class.as_str(), f.message))
    }

    /// sluice's per-event invocation on a warm instance (`isolation =
    /// "reuse"`): the same path, minus instantiation.
    pub async fn sluice_warm_call(&self) -> anyhow::Result<()> {
        let warm = self.warm.lock().expect("warm lock").take();
        let (report, warm) = invoke::invoke_reusing(
            &self.engine,
            &self.plugin,
            InvocationRequest {
                event: &self.event,
                tag: &self.tag,
                cpu: None,
                started: None,
                grants: &self.grants,
                config: &self.config,
                state: None,
                requester: None,
                http: None,
                limits: InvokeLimits::default(),
                log_budget: &self.log_budget,
                keep_logs: false,
            },
            warm,
            true,
        )
        .await;
        *self.warm.lock().expect("warm lock") = warm;
        report
            .outcome
            .map_err(|f| anyhow::anyhow!("{}: {}", f.class.as_str(), f.message))
    }
}

/// Mean time per call of `bare_call`, `sluice_call` and `sluice_warm_call`,
/// in µs: `rounds` interleaved rounds of `per_round` calls each (after a
/// warm-up), the median round of each kept, so a noisy neighbour hurts all
/// alike.
pub async fn measure(
    floor: &Floor,
    rounds: usize,
    per_round: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    for _ in 0..200 {
        floor.bare_call().await?;
        floor.sluice_call().await?;
        floor.sluice_warm_call().await?;
    }
    let (mut bare, mut sluice, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            floor.bare_call().await?;
        }
        bare.push(per_call_us(t.elapsed(), per_round));
        let t = Instant::now();
        for _ in 0..per_round {
            floor.sluice_call().await?;
        }
        sluice.push(per_call_us(t.elapsed(), per_round));
        let t = Instant::now();
        for _ in 0..per_round {
            floor.sluice_warm_call().await?;
        }
        warm.push(per_call_us(t.elapsed(), per_round));
    }
    let median = |v: &[f64]| crate::stats::median(v).unwrap_or(f64::NAN);
    Ok((median(&bare), median(&sluice), median(&warm)))
}

fn per_call_us(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n.max(1) as f64
}

/// What one component costs the host, measured in-process: compile time
/// (cold, and loaded from the compile cache) and the host memory one live
/// instance holds.
#[derive(Debug, Clone, Copy)]
pub struct ComponentCost {
    /// Compile + check + pre-link, nothing cached, ms.
    pub compile_cold_ms: f64,
    /// The same through a warm compile cache, ms.
    pub compile_cached_ms: f64,
    /// Growth of the process's VmRSS per live instance (each instantiated
    /// and called once, all held at once), MiB.
    pub rss_per_instance_mb: f64,
}

/// Measure [`ComponentCost`] of `wasm`, holding `live` instances at once.
pub async fn component_cost(wasm: &[u8], live: usize) -> anyhow::Result<ComponentCost> {
    use sluice::engine::cache::CompileCache;
    let engine = WasmEngine::new(EngineSettings::default())?;
    let linker = sluice::host::linker(engine.engine())?;
    let dir = tempfile::tempdir()?;
    let cache = CompileCache::new(dir.path());
    let t = Instant::now();
    component::compile_cached(&engine, &linker, wasm, Some(&cache))?;
    let compile_cold_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    component::compile_cached(&engine, &linker, wasm, Some(&cache))?;
    let compile_cached_ms = t.elapsed().as_secs_f64() * 1e3;

    let floor = Floor::new(wasm, &[])?;
    floor.bare_call().await?; // pool and image set up before the baseline
    let before = self_rss_mb().unwrap_or(f64::NAN);
    let mut held = Vec::with_capacity(live);
    for _ in 0..live {
        held.push(floor.bare_instance().await?);
    }
    let after = self_rss_mb().unwrap_or(f64::NAN);
    drop(held);
    Ok(ComponentCost {
        compile_cold_ms,
        compile_cached_ms,
        rss_per_instance_mb: (after - before) / live.max(1) as f64,
    })
}

/// This process's resident set size, MiB.
fn self_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    crate::report::kb_field(&status, "VmRSS:").map(|kb| kb as f64 / 1024.0)
}

/// Defines every `sluice:*` import of `component` as a function that traps
/// (and its resources as empty host resources). Wasmtime's
/// `define_unknown_imports_as_traps` would do it for every unknown import,
/// but it also takes WASI interfaces a newer WIT names by a patch version
/// the linker serves semver-compatibly for unknown, and its stand-ins then
/// clash with the real WASI resources.
fn define_sluice_imports_as_traps(
    linker: &mut Linker<BareState>,
    component: &Component,
) -> anyhow::Result<()> {
    use wasmtime::component::types::ComponentItem;
    let engine = component.engine().clone();
    for (name, item) in component.component_type().imports(&engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        if !name.starts_with("sluice:") {
            continue;
        }
        let mut root = linker.root();
        let mut linked = root.instance(name)?;
        for (export, item) in instance.exports(&engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let what = format!("{name}#{export}");
                    linked.func_new(export, move |_, _, _, _| {
                        Err(wasmtime::Error::msg(format!(
                            "the floor does not implement {what}"
                        )))
                    })?;
                }
                ComponentItem::Resource(_) => {
                    linked.resource(
                        export,
                        wasmtime::component::ResourceType::host::<()>(),
                        |_, _| Ok(()),
                    )?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}
