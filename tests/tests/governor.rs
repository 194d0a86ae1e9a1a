//! The engine reports how long the CPU governor held an attempt back, so a
//! deadline missed because the host was busy is told apart from one the
//! plugin missed on its own (issue 12, failure 14: CPU contention must not
//! count as the plugin's dependency failing). Real components, real engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice::contract;
use sluice::engine::component::{self, CompiledPlugin};
use sluice::engine::invoke::{
    self, FailureClass, InvocationReport, InvocationRequest, InvokeLimits,
};
use sluice::engine::{EngineSettings, WasmEngine};
use sluice::host::{self, LogBudget, PluginTag};
use sluice::subject::PublishGrants;
use sluice_e2e::plugin_wasm;

fn compile(engine: &WasmEngine, name: &str) -> Arc<CompiledPlugin> {
    let linker = host::linker(engine.engine()).unwrap();
    let bytes = std::fs::read(plugin_wasm(name)).unwrap();
    Arc::new(component::compile(engine, &linker, &bytes).unwrap())
}

async fn run(
    engine: &WasmEngine,
    plugin: &CompiledPlugin,
    name: &str,
    subject: &str,
    payload: &str,
    timeout: Duration,
) -> InvocationReport {
    let event = contract::Event {
        subject: subject.into(),
        payload: payload.as_bytes().to_vec(),
        idempotency_key: "k".into(),
        headers: vec![],
        attempt: 1,
        delivery: contract::Delivery {
            stream: None,
            sequence: None,
            published_at_ms: None,
            reply_to: None,
        },
    };
    let tag = PluginTag {
        name: name.into(),
        version: "v".into(),
    };
    invoke::invoke(
        engine,
        plugin,
        InvocationRequest {
            event: &event,
            tag: &tag,
            cpu: None,
            started: None,
            grants: &Arc::new(PublishGrants::new(vec![])),
            config: &Arc::default(),
            state: None,
            requester: None,
            http: None,
            limits: InvokeLimits {
                timeout,
                ..InvokeLimits::default()
            },
            log_budget: &Arc::new(LogBudget::unlimited()),
            keep_logs: false,
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_missed_while_throttled_is_reported_as_cpu_starvation() {
    let engine = WasmEngine::new(EngineSettings {
        background_cpu_share: 0.02,
        ..EngineSettings::default()
    })
    .unwrap();
    let hostile = compile(&engine, "hostile");
    let noop = compile(&engine, "noop");
    let timeout = Duration::from_millis(600);

    // Attempts past one tick teach the governor that hostile runs long: its
    // attempts now run in the background (generous deadline: the first
    // background one may idle after its own foreground predecessors).
    for _ in 0..8 {
        let report = run(
            &engine,
            &hostile,
            "hostile",
            "h.work",
            "30",
            Duration::from_secs(5),
        )
        .await;
        assert!(report.outcome.is_ok(), "{:?}", report.outcome);
    }
    assert!(!engine.governor().is_interactive("hostile"));

    // Alone, a runaway loop misses its deadline on its own: not starvation.
    let alone = run(&engine, &hostile, "hostile", "h.loop", "", timeout).await;
    assert_eq!(
        alone.outcome.as_ref().unwrap_err().class,
        FailureClass::DeadlineExceeded
    );
    assert!(
        !alone.cpu_starved(),
        "nothing else ran: throttled {:?} of {:?}",
        alone.throttled,
        alone.elapsed
    );

    // With an interactive plugin busy beside it, its attempt is held back.
    let busy = Arc::new(AtomicBool::new(true));
    let neighbour = {
        let (engine, noop, busy) = (engine.clone(), noop.clone(), busy.clone());
        tokio::spawn(async move {
            while busy.load(Ordering::Relaxed) {
                let report = run(&engine, &noop, "noop", "n.x", "", Duration::from_secs(5)).await;
                assert!(report.outcome.is_ok(), "{:?}", report.outcome);
            }
        })
    };
    let starved = run(&engine, &hostile, "hostile", "h.loop", "", timeout).await;
    busy.store(false, Ordering::Relaxed);
    neighbour.await.unwrap();
    assert_eq!(
        starved.outcome.as_ref().unwrap_err().class,
        FailureClass::DeadlineExceeded
    );
    assert!(
        starved.cpu_starved(),
        "throttled {:?} of {:?}",
        starved.throttled,
        starved.elapsed
    );
}
