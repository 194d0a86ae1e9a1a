//! The fake payment service (`examples/orders/payments.py`, Python standard
//! library) as a child process on a free loopback port, and its admin and
//! statistics calls. The demo and the end-to-end test both start it here.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::http;

/// The service's counters (`GET /stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Cards actually charged.
    pub charges: u64,
    /// Distinct `Idempotency-Key`s among the successful charges.
    pub unique_keys: u64,
    /// Charge requests received (retries and duplicates included).
    pub charge_requests: u64,
    /// Charges declined (402).
    pub declines: u64,
    /// Refunds made.
    pub refunds: u64,
    /// Requests answered 503 while told to fail.
    pub unavailable: u64,
    /// Requests answered from an earlier request with the same key.
    pub replayed: u64,
}

/// A running payment service; killed on drop.
pub struct PaymentService {
    child: Child,
    url: String,
}

impl PaymentService {
    /// Start `payments.py` (the script at `script`) on a free port.
    pub fn start(script: &Path) -> anyhow::Result<PaymentService> {
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting python3 {}", script.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("payments listening on ") else {
            let _ = child.kill();
            bail!("{} did not start: {line:?}", script.display());
        };
        Ok(PaymentService {
            url: url.to_string(),
            child,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The counters.
    pub fn stats(&self) -> anyhow::Result<Stats> {
        stats(&self.url)
    }

    /// Answer 503 to every payment request for `ms` milliseconds.
    pub fn fail_for_ms(&self, ms: u64) -> anyhow::Result<()> {
        admin(&self.url, json!({ "fail_for_ms": ms }))
    }

    /// Wait `ms` milliseconds before answering (0: answer at once).
    pub fn slow_ms(&self, ms: u64) -> anyhow::Result<()> {
        admin(&self.url, json!({ "slow_ms": ms }))
    }

    /// Decline every new charge (true) or only the test card (false).
    pub fn decline_all(&self, on: bool) -> anyhow::Result<()> {
        admin(&self.url, json!({ "decline": on }))
    }
}

impl Drop for PaymentService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The counters of the service at `url`.
pub fn stats(url: &str) -> anyhow::Result<Stats> {
    let v = http::get(&format!("{url}/stats"))?.json()?;
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok(Stats {
        charges: n("charges"),
        unique_keys: n("unique_keys"),
        charge_requests: n("charge_requests"),
        declines: n("declines"),
        refunds: n("refunds"),
        unavailable: n("unavailable"),
        replayed: n("replayed"),
    })
}

/// POST an admin command to the service at `url`.
pub fn admin(url: &str, command: Value) -> anyhow::Result<()> {
    let response = http::post_json(&format!("{url}/admin"), &command)?;
    if response.status != 200 {
        bail!(
            "payment service admin {command}: {} {}",
            response.status,
            response.text()
        );
    }
    Ok(())
}
