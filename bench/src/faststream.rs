//! The Python peer: a FastStream JetStream pull consumer (`bench/faststream/consumer.py`)
//! doing the no-op job with an explicit ack per message, the way a Python
//! service on NATS is commonly written. Issue 16 asks that sluice's default
//! path beat it by a wide margin, measured in the same run on the same
//! nats-server.
//!
//! FastStream is installed on first use into a virtualenv under
//! `.tools/faststream/` (`python3 -m venv`, then `pip install
//! faststream[nats]==`[`VERSION`]), like the other tools the project pins
//! there. When Python, venv or the registry is unavailable, [`install`]
//! returns why, and the scenario records the row as skipped with that note
//! instead of failing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

/// The FastStream release measured (pinned, so runs compare).
pub const VERSION: &str = "0.7.8";
/// Messages per pull request of the FastStream consumer.
pub const BATCH: usize = 100;

fn venv_dir() -> PathBuf {
    sluice_e2e::repo_root().join(".tools/faststream")
}

fn python_in(venv: &Path) -> PathBuf {
    venv.join("bin/python")
}

fn script() -> PathBuf {
    sluice_e2e::repo_root().join("bench/faststream/consumer.py")
}

/// The virtualenv's Python with FastStream installed (installing it the
/// first time); `Err` says why it is unavailable.
pub fn install() -> anyhow::Result<PathBuf> {
    let venv = venv_dir();
    let python = python_in(&venv);
    let marker = venv.join(format!("faststream-{VERSION}.installed"));
    if marker.exists() && python.exists() {
        return Ok(python);
    }
    let run = |cmd: &mut Command, what: &str| -> anyhow::Result<()> {
        let out = cmd
            .stdout(Stdio::null())
            .output()
            .with_context(|| format!("{what}: cannot run it"))?;
        if !out.status.success() {
            bail!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    eprintln!(
        "sluice-bench: installing FastStream {VERSION} into {}",
        venv.display()
    );
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv .tools/faststream",
    )?;
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("faststream[nats]=={VERSION}"),
        ]),
        "pip install faststream[nats]",
    )?;
    std::fs::write(&marker, b"")?;
    Ok(python)
}

/// A running FastStream consumer; killed on drop.
pub struct Peer {
    /// Events acknowledged so far (from its `progress N` lines).
    pub progress: Arc<AtomicU64>,
    child: Child,
}

impl Peer {
    /// Start the consumer on `durable` of `stream` (filter `subject`) and
    /// wait until it is subscribed.
    pub fn spawn(
        python: &Path,
        url: &str,
        stream: &str,
        subject: &str,
        durable: &str,
    ) -> anyhow::Result<Peer> {
        let mut child = Command::new(python)
            .arg(script())
            .args([url, stream, subject, durable, &BATCH.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the FastStream consumer")?;
        let stdout = child.stdout.take().context("consumer stdout")?;
        let progress = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let counter = progress.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    let _ = ready_tx.send(());
                } else if let Some(n) = line
                    .strip_prefix("progress ")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    counter.store(n, Ordering::Relaxed);
                }
            }
        });
        let mut peer = Peer { progress, child };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let status = peer.child.try_wait().ok().flatten();
            bail!("the FastStream consumer did not start (exit status {status:?})");
        }
        Ok(peer)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
