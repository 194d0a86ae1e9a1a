//! One tiny end-to-end pass through the harness: a real nats-server, the
//! real host binary, baseline and sluice side by side, latency collection.
#![allow(missing_docs)]

use std::time::Duration;

use sluice_bench::scenarios::{self, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_scenarios_produce_rows_and_bars() {
    let out = tempfile::tempdir().unwrap();
    let opts = Options {
        events: 500,
        rate: 1_000,
        low_rate: 0,
        duration: Duration::from_secs(1),
        window: 500,
        reloads: 1,
        fast_isolation: None,
        manifest_extra: String::new(),
        config_extra: String::new(),
        host_log: "info".into(),
        out_dir: out.path().to_path_buf(),
        floor_calls: (1, 20),
        rounds: 1,
    };
    let mut results = Vec::new();
    for name in ["floor", "core-realistic", "js-noop"] {
        let r = scenarios::run(name, &opts).await;
        let log = std::fs::read_to_string(out.path().join("host.log")).unwrap_or_default();
        assert!(r.error.is_none(), "{name}: {:?}\nhost log:\n{log}", r.error);
        results.push(r);
    }
    let realistic = &results[1];
    assert!(
        realistic.rows[1].ratio_vs_baseline.is_some(),
        "{realistic:?}"
    );
    let latency = realistic
        .rows
        .iter()
        .filter_map(|r| r.latency)
        .collect::<Vec<_>>();
    assert_eq!(latency.len(), 2, "{realistic:?}");
    assert!(latency.iter().all(|l| l.count == 1_000));
    assert!(realistic.rows[1].rss_mb.unwrap() > 1.0);
    let bars = sluice_bench::bars::judge(&results, 1_000);
    assert!(bars.iter().any(|b| b.measured.is_some()));
}
