//! The five scenes of `make demo`, each a caption, an action and a check
//! that polls for its condition with a deadline (never a fixed sleep).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use serde_json::Value;
use sluice_orders::saga::{self, DECLINED_CARD, GOOD_CARD, Observer, order};
use sluice_orders::{admin, payments};

/// The plugins of the application, deployed in this order.
const PLUGINS: [&str; 4] = [
    "orders-validate",
    "orders-inventory",
    "orders-payment",
    "orders-shipping",
];

/// Where everything is (flags given by scripts/demo.sh).
pub struct Args {
    nats: String,
    payments: String,
    admin: String,
    plugins: PathBuf,
    build: PathBuf,
    sluice: PathBuf,
    keep: bool,
}

impl Args {
    /// `--nats URL --payments URL --admin IP:PORT --plugins DIR --build DIR --sluice BIN`.
    pub fn parse() -> anyhow::Result<Args> {
        let mut args = std::env::args().skip(1);
        let (mut nats, mut pay, mut adm, mut plugins, mut build, mut sluice) =
            (None, None, None, None, None, None);
        let mut keep = false;
        while let Some(flag) = args.next() {
            if flag == "--keep" {
                keep = true;
                continue;
            }
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--nats" => nats = Some(value),
                "--payments" => pay = Some(value),
                "--admin" => adm = Some(value),
                "--plugins" => plugins = Some(PathBuf::from(value)),
                "--build" => build = Some(PathBuf::from(value)),
                "--sluice" => sluice = Some(PathBuf::from(value)),
                other => bail!("unknown flag {other}"),
            }
        }
        let usage = "usage: orders-demo --nats URL --payments URL --admin IP:PORT --plugins DIR --build DIR --sluice BIN [--keep]";
        Ok(Args {
            nats: nats.context(usage)?,
            payments: pay.context(usage)?,
            admin: adm.context(usage)?,
            plugins: plugins.context(usage)?,
            build: build.context(usage)?,
            sluice: sluice.context(usage)?,
            keep,
        })
    }
}

fn scene(n: u32, caption: &str) {
    println!("\n\x1b[1m== {n}/5 {caption}\x1b[0m");
}

fn say(line: impl AsRef<str>) {
    println!("   {}", line.as_ref());
}

/// Poll `check` every 50 ms until it yields a value or `within` passes.
async fn until<T>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run the demo.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = async_nats::connect(&args.nats)
        .await
        .with_context(|| format!("connecting to {}", args.nats))?;
    let js = jetstream::new(client.clone());
    saga::create_stream(&js).await?;
    let observer = Observer::start(&client).await?;
    let mut placed: Vec<String> = Vec::new();

    deploy(&args).await?;

    scene(
        1,
        "A successful order: validate (Python) -> reserve stock (Rust, KV state) -> charge (Rust; outbound HTTP) -> ship (JavaScript)",
    );
    let o = order("o-1001", &[("MUG-1", 2), ("TEE-1", 1)], GOOD_CARD, "NZ");
    say(format!("placing {o}"));
    saga::place(&js, &o).await?;
    placed.push("o-1001".into());
    let trail = &observer
        .settled(&placed[..1], Duration::from_secs(60))
        .await?[0];
    expect(trail, "completed")?;
    say(format!("o-1001: {}", trail.path()));
    say(format!(
        "charged {} cents as {}, tracking {}",
        trail.last["amount_cents"], trail.last["charge_id"], trail.last["tracking"]
    ));

    scene(
        2,
        "A later step fails for good: the compensations run in reverse",
    );
    let declined = order("o-1002", &[("POSTER-1", 3)], DECLINED_CARD, "GB");
    let unshippable = order("o-1003", &[("TEE-1", 2)], GOOD_CARD, "AQ");
    let invalid = order("o-1004", &[("MUG-1", 0)], GOOD_CARD, "FR");
    for o in [&declined, &unshippable, &invalid] {
        saga::place(&js, o).await?;
    }
    let ids: Vec<String> = ["o-1002", "o-1003", "o-1004"].map(String::from).to_vec();
    placed.extend(ids.iter().cloned());
    let trails = observer.settled(&ids, Duration::from_secs(60)).await?;
    say(format!("o-1002 (card declined): {}", trails[0].path()));
    say("        payment declined -> inventory released the 3 posters -> cancelled");
    say(format!("o-1003 (ships to AQ):   {}", trails[1].path()));
    say("        shipping failed -> payment refunded -> inventory released -> cancelled");
    say(format!("o-1004 (qty 0):         {}", trails[2].path()));
    expect(&trails[0], "cancelled")?;
    expect(&trails[1], "cancelled")?;
    expect(&trails[2], "rejected")?;
    for (trail, step) in [(&trails[0], "payment_declined"), (&trails[1], "refunded")] {
        if !trail.steps.iter().any(|s| s == step) {
            bail!("expected a `{step}` step: {}", trail.path());
        }
    }

    scene(
        3,
        "The payment service goes down for 6 s: the breaker opens, events wait in the stream",
    );
    let opened_before = admin::stat(&args.admin, "orders-payment", "breaker_opened");
    payments::admin(&args.payments, serde_json::json!({ "fail_for_ms": 6000 }))?;
    say("payment service answers 503 for the next 6 s; placing 8 orders");
    let burst: Vec<String> = (2001..=2008).map(|n| format!("o-{n}")).collect();
    for id in &burst {
        saga::place(&js, &order(id, &[("MUG-1", 1)], GOOD_CARD, "DE")).await?;
    }
    placed.extend(burst.iter().cloned());
    until(
        Duration::from_secs(20),
        "the payment breaker to open",
        || {
            (admin::stat(&args.admin, "orders-payment", "breaker_opened") > opened_before)
                .then_some(())
        },
    )
    .await?;
    let waiting = saga::backlog(&js).await?;
    say(format!(
        "breaker of orders-payment: {} (opened after 3 failures in a row); {waiting} events waiting in the stream; {} dead letters",
        admin::field(&args.admin, "orders-payment", "breaker").unwrap_or_default(),
        saga::stream_messages(&js, saga::DLQ_STREAM).await?
    ));
    let trails = observer.settled(&burst, Duration::from_secs(90)).await?;
    for trail in &trails {
        expect(trail, "completed")?;
    }
    let stats = payments::stats(&args.payments)?;
    say(format!(
        "service back: all 8 completed; breaker {}; the service refused {} requests while down; {} dead letters",
        admin::field(&args.admin, "orders-payment", "breaker").unwrap_or_default(),
        stats.unavailable,
        saga::stream_messages(&js, saga::DLQ_STREAM).await?
    ));

    scene(
        4,
        "A poison event: dead-lettered, fixed by hot-deploying v2, replayed",
    );
    let dlq_before = saga::stream_messages(&js, saga::DLQ_STREAM).await?;
    let poison = order("o-3001", &[("mug-1", 1)], GOOD_CARD, "US");
    say(
        "placing o-3001 with sku `mug-1`: validation accepts any case, inventory v1 matches exactly (the bug)",
    );
    saga::place(&js, &poison).await?;
    placed.push("o-3001".into());
    let js2 = js.clone();
    wait_async(Duration::from_secs(30), "the dead letter", || {
        let js = js2.clone();
        async move {
            saga::stream_messages(&js, saga::DLQ_STREAM)
                .await
                .unwrap_or(0)
                > dlq_before
        }
    })
    .await?;
    sluice(&args, &["dlq", "list"])?;
    let old = admin::field(&args.admin, "orders-inventory", "version").unwrap_or_default();
    let v2 = args.build.join("orders-inventory-v2.wasm");
    std::fs::copy(&v2, args.plugins.join("orders-inventory.wasm"))
        .with_context(|| format!("copying {}", v2.display()))?;
    say(format!(
        "cp orders-inventory-v2.wasm {}/orders-inventory.wasm",
        args.plugins.display()
    ));
    let new = until(
        Duration::from_secs(60),
        "orders-inventory v2 to serve",
        || admin::field(&args.admin, "orders-inventory", "version").filter(|v| *v != old),
    )
    .await?;
    say(format!(
        "orders-inventory hot-reloaded: version {old} -> {new}, nothing restarted"
    ));
    sluice(
        &args,
        &["dlq", "replay", "--plugin", "orders-inventory", "--all"],
    )?;
    let trail = &observer
        .settled(&placed[placed.len() - 1..], Duration::from_secs(30))
        .await?[0];
    expect(trail, "completed")?;
    say(format!("o-3001: {}", trail.path()));

    scene(5, "The counts that prove it");
    let settled = observer.settled(&placed, Duration::from_secs(30)).await?;
    let count = |o: &str| settled.iter().filter(|t| t.outcome() == Some(o)).count();
    let js3 = js.clone();
    wait_async(
        Duration::from_secs(30),
        "every consumer to be drained",
        || {
            let js = js3.clone();
            async move { saga::backlog(&js).await.map(|n| n == 0).unwrap_or(false) }
        },
    )
    .await?;
    let dead = saga::stream_messages(&js, saga::DLQ_STREAM).await?;
    let stats = payments::stats(&args.payments)?;
    say(format!(
        "orders placed {} = settled {} ({} completed, {} cancelled, {} rejected)",
        placed.len(),
        settled.len(),
        count("completed"),
        count("cancelled"),
        count("rejected")
    ));
    say(format!(
        "charges {} = unique idempotency keys {} (from {} charge requests: {} answered from an earlier key), {} refund, {} declined",
        stats.charges,
        stats.unique_keys,
        stats.charge_requests,
        stats.replayed,
        stats.refunds,
        stats.declines
    ));
    say(format!(
        "dead letters left {dead}; events waiting in the stream 0"
    ));
    for name in PLUGINS {
        let s = |k| admin::stat(&args.admin, name, k);
        say(format!(
            "{name:<17} handled {:>3}  retries {:>3}  breaker opened {}  dead-lettered {}",
            s("succeeded"),
            s("retries"),
            s("breaker_opened"),
            s("dead_lettered")
        ));
    }
    if settled.len() != placed.len() || stats.charges != stats.unique_keys || dead != 0 {
        bail!("the counts do not add up");
    }
    println!("\n\x1b[1mall orders settled, every charge made once, nothing lost\x1b[0m");
    if args.keep {
        interactive(&js, &observer).await?;
    }
    Ok(())
}

/// `--keep`: place the orders typed on stdin (one JSON object a line) and
/// show where each ends, until end of input (the stack keeps running).
async fn interactive(js: &jetstream::Context, observer: &Observer) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    println!(
        "\nThe application keeps running. Type an order (JSON, one line) to place it, e.g.\n  \
         {}\nCtrl-D stops.",
        order("o-9001", &[("MUG-1", 1)], GOOD_CARD, "AQ")
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let Ok(o) = serde_json::from_str::<Value>(&line) else {
            if !line.trim().is_empty() {
                say("not JSON; an order looks like the example above");
            }
            continue;
        };
        let Some(id) = o.get("id").and_then(Value::as_str).map(str::to_string) else {
            say("an order needs an \"id\"");
            continue;
        };
        saga::place(js, &o).await?;
        match observer
            .settled(std::slice::from_ref(&id), Duration::from_secs(60))
            .await
        {
            Ok(trails) => say(format!("{id}: {} {}", trails[0].path(), trails[0].last)),
            Err(e) => say(format!("{e:#} (see `sluice dlq list`)")),
        }
    }
    Ok(())
}

/// Fail unless `trail` ended as `outcome`.
fn expect(trail: &saga::Trail, outcome: &str) -> anyhow::Result<()> {
    if trail.outcome() != Some(outcome) {
        bail!(
            "expected `{outcome}`, got {} ({})",
            trail.path(),
            trail.last
        );
    }
    Ok(())
}

/// Poll an async condition every 50 ms until it holds or `within` passes.
async fn wait_async<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Copy the four plugins (manifest first, then the component) into the
/// watched folder and wait until the host serves them all.
async fn deploy(args: &Args) -> anyhow::Result<()> {
    scene(
        0,
        "Deploying the application: copying 4 plugins into the watched folder",
    );
    for name in PLUGINS {
        for ext in ["toml", "wasm"] {
            let from = args.build.join(format!("{name}.{ext}"));
            std::fs::copy(&from, args.plugins.join(format!("{name}.{ext}")))
                .with_context(|| format!("copying {}", from.display()))?;
        }
        say(format!(
            "cp {name}.toml {name}.wasm {}/",
            args.plugins.display()
        ));
    }
    say(
        "waiting for the host to load them (the Python and JavaScript components take a while to compile the first time; cached after)",
    );
    until(Duration::from_secs(300), "the 4 plugins to serve", || {
        let plugins = admin::plugins(&args.admin).ok()?;
        let serving = |name: &str| {
            plugins.iter().any(|p| {
                p.get("name").and_then(Value::as_str) == Some(name)
                    && p.get("state").and_then(Value::as_str) == Some("serving")
            })
        };
        PLUGINS.iter().all(|n| serving(n)).then_some(())
    })
    .await?;
    say("all 4 serving");
    Ok(())
}

/// Run `sluice ARGS --nats-url URL`, echoing the command and its output.
fn sluice(args: &Args, rest: &[&str]) -> anyhow::Result<()> {
    say(format!("$ sluice {}", rest.join(" ")));
    let output = Command::new(&args.sluice)
        .args(rest)
        .args(["--nats-url", &args.nats])
        .output()
        .with_context(|| format!("running {}", args.sluice.display()))?;
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
    {
        say(format!("  {line}"));
    }
    if !output.status.success() {
        bail!("sluice {} failed ({})", rest.join(" "), output.status);
    }
    Ok(())
}
