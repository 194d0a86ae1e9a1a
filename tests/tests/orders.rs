//! The order saga of `make demo` (examples/orders, plugins/orders-*) end to
//! end: a real nats-server, the four plugins in three languages built from
//! source, the fake payment service (Python, on loopback) started by the
//! test, and the outcomes of every path: success, a declined payment and a
//! failed shipment compensated, stock released by the compensations, an
//! outage with the breaker open and nothing dead-lettered, a slow service
//! retried under one idempotency key, and a poison event dead-lettered,
//! fixed by a hot-deployed version and replayed. At the end: placed =
//! settled, charges = unique keys, no dead letter, no backlog.

use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use sluice_e2e::polyglot::polyglot_wasm;
use sluice_e2e::{NatsServer, PluginDir, plugin_wasm, repo_root, sluice_command};
use sluice_orders::payments::PaymentService;
use sluice_orders::saga::{self, DECLINED_CARD, GOOD_CARD, Observer, Trail, order};

/// The plugin's manifest as committed in plugins/<name>/manifest.toml.
fn manifest(name: &str) -> String {
    std::fs::read_to_string(repo_root().join(format!("plugins/{name}/manifest.toml")))
        .expect("plugin manifest")
}

fn steps(trail: &Trail) -> Vec<&str> {
    trail.steps.iter().map(String::as_str).collect()
}

/// Place `orders` and wait until each is settled; their trails.
async fn run(
    js: &jetstream::Context,
    observer: &Observer,
    placed: &mut Vec<String>,
    orders: &[serde_json::Value],
) -> Vec<Trail> {
    let mut ids = Vec::new();
    for o in orders {
        saga::place(js, o).await.expect("order placed");
        ids.push(o["id"].as_str().unwrap().to_string());
    }
    placed.extend(ids.iter().cloned());
    observer
        .settled(&ids, Duration::from_secs(90))
        .await
        .expect("orders settle")
}

fn sluice_cli(nats: &NatsServer, args: &[&str]) -> (bool, String) {
    let mut cmd: Command = sluice_command(env!("CARGO_BIN_EXE_sluice-e2e-host"));
    let out = cmd
        .args(args)
        .args(["--nats-url", &nats.url()])
        .output()
        .expect("run sluice");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn dead_letters(js: &jetstream::Context) -> u64 {
    saga::stream_messages(js, saga::DLQ_STREAM).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_order_saga_settles_every_order_on_every_path() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    saga::create_stream(&js).await.unwrap();
    let payments = PaymentService::start(&repo_root().join("examples/orders/payments.py"))
        .expect("payment service starts");
    let observer = Observer::start(&client).await.unwrap();

    let dir = PluginDir::new();
    dir.add_file(
        "orders-validate",
        &polyglot_wasm("orders-validate"),
        &manifest("orders-validate"),
    );
    dir.add(
        "orders-inventory",
        "orders-inventory",
        &manifest("orders-inventory"),
    );
    dir.add(
        "orders-payment",
        "orders-payment",
        &manifest("orders-payment"),
    );
    dir.add_file(
        "orders-shipping",
        &polyglot_wasm("orders-shipping"),
        &manifest("orders-shipping"),
    );
    let config = format!(
        "[plugin.orders-payment]\nplugin_config = {{ payment_url = \"{}\" }}\nhttp_allow_private = true\n",
        payments.url()
    );
    let host = sluice_e2e::start_host_configured_patient(&nats.url(), dir.path(), &config).await;
    let mut placed = Vec::new();

    // 1. Success through every step.
    let t = run(
        &js,
        &observer,
        &mut placed,
        &[order("o-1", &[("MUG-1", 2), ("TEE-1", 1)], GOOD_CARD, "NZ")],
    )
    .await;
    assert_eq!(
        steps(&t[0]),
        ["placed", "validated", "reserved", "paid", "completed"],
        "{:?}",
        t[0]
    );
    assert_eq!(t[0].last["amount_cents"], 2 * 1200 + 2500);
    assert!(
        t[0].last["charge_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("ch_")),
        "{}",
        t[0].last
    );
    assert_eq!(t[0].last["tracking"], "TRK-o-1-NZ");

    // 2. Permanent failures later in the saga are compensated in reverse;
    //    invalid orders end at validation.
    let t = run(
        &js,
        &observer,
        &mut placed,
        &[
            order("o-2", &[("POSTER-1", 30)], DECLINED_CARD, "GB"),
            order("o-3", &[("TEE-1", 2)], GOOD_CARD, "AQ"),
            order("o-4", &[("MUG-1", 0)], GOOD_CARD, "FR"),
        ],
    )
    .await;
    assert_eq!(
        steps(&t[0]),
        [
            "placed",
            "validated",
            "reserved",
            "payment_declined",
            "cancelled"
        ]
    );
    assert_eq!(t[0].last["released"], true);
    assert_eq!(
        steps(&t[1]),
        [
            "placed",
            "validated",
            "reserved",
            "paid",
            "shipping_failed",
            "refunded",
            "cancelled"
        ]
    );
    assert!(t[1].last["refund_id"].as_str().is_some(), "{}", t[1].last);
    assert_eq!(steps(&t[2]), ["placed", "rejected"]);
    assert!(
        t[2].last["reason"].as_str().unwrap().contains("qty"),
        "{}",
        t[2].last
    );
    let stats = payments.stats().unwrap();
    assert_eq!((stats.declines, stats.refunds), (1, 1), "{stats:?}");

    //    The declined order's 30 posters (of 50) were released: 40 fit now,
    //    and then 20 more do not.
    let t = run(
        &js,
        &observer,
        &mut placed,
        &[order("o-5", &[("POSTER-1", 40)], GOOD_CARD, "IE")],
    )
    .await;
    assert_eq!(t[0].outcome(), Some("completed"), "{:?}", t[0]);
    let t = run(
        &js,
        &observer,
        &mut placed,
        &[order("o-6", &[("POSTER-1", 20)], GOOD_CARD, "IE")],
    )
    .await;
    assert_eq!(steps(&t[0]), ["placed", "validated", "cancelled"]);
    assert!(
        t[0].last["reason"]
            .as_str()
            .unwrap()
            .contains("out of stock"),
        "{}",
        t[0].last
    );

    // 3. An outage: the breaker opens, events wait, none is dead-lettered,
    //    all complete once the service is back.
    let opened = host.stats("orders-payment").unwrap().breaker_opened;
    payments.fail_for_ms(4000).unwrap();
    let burst: Vec<_> = (0..6)
        .map(|n| order(&format!("o-out-{n}"), &[("MUG-1", 1)], GOOD_CARD, "DE"))
        .collect();
    let t = run(&js, &observer, &mut placed, &burst).await;
    assert!(t.iter().all(|t| t.outcome() == Some("completed")), "{t:?}");
    assert!(
        host.stats("orders-payment").unwrap().breaker_opened > opened,
        "the breaker opened during the outage"
    );
    assert!(payments.stats().unwrap().unavailable >= 3);
    assert_eq!(
        dead_letters(&js).await,
        0,
        "nothing dead-lettered by the outage"
    );

    // A slow service: the attempt times out, the retry carries the same
    // Idempotency-Key and is answered from the first request: one charge.
    let before = payments.stats().unwrap();
    payments.slow_ms(3500).unwrap();
    saga::place(&js, &order("o-slow", &[("TEE-1", 1)], GOOD_CARD, "US"))
        .await
        .unwrap();
    placed.push("o-slow".into());
    sluice_e2e::eventually(Duration::from_secs(60), "a retried charge request", || {
        payments.stats().unwrap().replayed > before.replayed
    })
    .await;
    payments.slow_ms(0).unwrap();
    let t = observer
        .settled(&["o-slow".to_string()], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(t[0].outcome(), Some("completed"), "{:?}", t[0]);
    let after = payments.stats().unwrap();
    assert_eq!(after.charges, before.charges + 1, "{before:?} -> {after:?}");

    // 4. A poison event: dead-lettered by inventory v1, listed, fixed by
    //    copying v2 over the file, replayed, completed.
    saga::place(&js, &order("o-poison", &[("mug-1", 1)], GOOD_CARD, "US"))
        .await
        .unwrap();
    placed.push("o-poison".into());
    let js2 = js.clone();
    sluice_e2e::eventually_async!(
        Duration::from_secs(30),
        "the poison event dead-lettered",
        dead_letters(&js2).await == 1
    );
    let (ok, listed) = sluice_cli(&nats, &["dlq", "list"]);
    assert!(
        ok && listed.contains("orders-inventory") && listed.contains("unknown SKU `mug-1`"),
        "{listed}"
    );
    let version = |host: &sluice::service::HostHandle| {
        host.plugins()
            .into_iter()
            .find(|p| p.name == "orders-inventory")
            .and_then(|p| p.version)
    };
    let v1 = version(&host);
    std::fs::copy(
        plugin_wasm("orders-inventory-v2"),
        dir.path().join("orders-inventory.wasm"),
    )
    .unwrap();
    sluice_e2e::eventually(Duration::from_secs(60), "inventory v2 serving", || {
        version(&host) != v1
    })
    .await;
    let (ok, replayed) = sluice_cli(
        &nats,
        &["dlq", "replay", "--plugin", "orders-inventory", "--all"],
    );
    assert!(ok, "{replayed}");
    let t = observer
        .settled(&["o-poison".to_string()], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        steps(&t[0]),
        ["placed", "validated", "reserved", "paid", "completed"],
        "{:?}",
        t[0]
    );

    // 5. The counts.
    let settled = observer
        .settled(&placed, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(settled.len(), placed.len());
    let stats = payments.stats().unwrap();
    // o-1, o-3, o-5, 6 in the outage, o-slow, o-poison.
    assert_eq!(stats.charges, 11, "{stats:?}");
    assert_eq!(stats.charges, stats.unique_keys, "{stats:?}");
    assert_eq!(dead_letters(&js).await, 0);
    let js3 = js.clone();
    sluice_e2e::eventually_async!(
        Duration::from_secs(30),
        "every consumer drained",
        saga::backlog(&js3).await.unwrap() == 0
    );
    host.shutdown().await.expect("host stops cleanly");
}
