//! The sluice host as a child process: a config file written from the
//! scenario, the release binary built next to this harness
//! (`sluice-bench-host`), its admin endpoint for readiness and metrics, and
//! /proc for its memory. Running it out of process keeps its RSS and CPU its
//! own and measures exactly what an operator runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::report::kb_field;

/// The host binary: `sluice-bench-host` next to this executable (Cargo puts
/// every bin of the package in the same folder), built on demand if missing.
pub fn host_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SLUICE_BENCH_HOST") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe().context("locating the benchmark executable")?;
    let mut dir = exe.parent().context("executable folder")?.to_path_buf();
    // Tests and benches run from target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("sluice-bench-host");
    if !bin.exists() {
        let release = dir.ends_with("release");
        eprintln!("building sluice-bench-host (release: {release}) ...");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "sluice-bench", "--bin", "sluice-bench-host"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().context("running cargo build")?;
        if !status.success() || !bin.exists() {
            bail!(
                "cannot build {}; run `cargo build --release -p sluice-bench --bins`",
                bin.display()
            );
        }
    }
    Ok(bin)
}

/// How to start one host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// NATS URL.
    pub nats_url: String,
    /// Plugin folder.
    pub plugins: PathBuf,
    /// Compile cache folder, or `None` for `off`.
    pub compile_cache: Option<PathBuf>,
    /// Extra config-file text appended verbatim (pass-through knobs).
    pub extra: String,
    /// The host's `log` filter (`info`, the host's own default, unless a
    /// run asks otherwise: the event span is part of the measured path).
    pub log: String,
}

impl HostConfig {
    /// The config file text.
    pub fn render(&self, admin: SocketAddr) -> String {
        let cache = match &self.compile_cache {
            Some(dir) => toml_str(&dir.display().to_string()),
            None => "\"off\"".into(),
        };
        format!(
            "nats_url = {}\nplugins = {}\nadmin_addr = \"{admin}\"\nlog = {}\ncompile_cache = {cache}\ncore_buffer = 100000\n{}\n",
            toml_str(&self.nats_url),
            toml_str(&self.plugins.display().to_string()),
            toml_str(&self.log),
            self.extra
        )
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A running host process; killed on drop.
pub struct HostProcess {
    child: Child,
    /// Its admin endpoint.
    pub admin: SocketAddr,
    /// When it was spawned.
    pub spawned: Instant,
    _config: tempfile::TempDir,
}

impl HostProcess {
    /// Spawn `sluice run --config <file>`; stderr goes to `log` (appended).
    pub fn spawn(config: &HostConfig, log: &Path) -> anyhow::Result<HostProcess> {
        let admin: SocketAddr = format!("127.0.0.1:{}", sluice_e2e::free_port()).parse()?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("sluice.toml");
        std::fs::write(&file, config.render(admin))?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let bin = host_bin()?;
        let spawned = Instant::now();
        let child = sluice_e2e::sluice_command(&bin.display().to_string())
            // An operator's host runs without forced backtraces; with them every
            // error created on the hot path captures a stack (measured: ~3%).
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .arg("run")
            .arg("--config")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        Ok(HostProcess {
            child,
            admin,
            spawned,
            _config: dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until /readyz answers 200 (NATS connected, every plugin serving).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("the host exited during start ({status}); see the host log");
            }
            match get(self.admin, "/readyz").await {
                Ok((200, _)) => return Ok(self.spawned.elapsed()),
                Ok((_, body)) => last = body,
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("host not ready within {timeout:?}: {last}")
    }

    /// The Prometheus text of /metrics.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        match get(self.admin, "/metrics").await? {
            (200, body) => Ok(body),
            (code, body) => bail!("/metrics answered {code}: {body}"),
        }
    }

    /// The /plugins JSON.
    pub async fn plugins(&self) -> anyhow::Result<serde_json::Value> {
        let (_, body) = get(self.admin, "/plugins").await?;
        Ok(serde_json::from_str(&body)?)
    }

    /// (VmRSS, VmHWM) in MiB, from /proc.
    pub fn rss_mb(&self) -> Option<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let mb = |k| kb_field(&status, k).map(|kb| kb as f64 / 1024.0);
        Some((mb("VmRSS:")?, mb("VmHWM:")?))
    }

    /// Start a task that polls the handled-OK counter every `every` into the
    /// returned atomic, until the returned flag is set.
    pub fn poll_handled(&self, every: Duration) -> (Arc<AtomicU64>, Arc<AtomicBool>) {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, admin) = (count.clone(), stop.clone(), self.admin);
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok((200, body)) = get(admin, "/metrics").await {
                    c.store(
                        counter_sum(&body, "sluice_events_handled_total", Some("ok")),
                        Ordering::Relaxed,
                    );
                }
                tokio::time::sleep(every).await;
            }
        });
        (count, stop)
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(addr: SocketAddr, path: &'static str) -> anyhow::Result<(u16, String)> {
    // sluice_e2e::http_get panics when the endpoint is not up; probe first,
    // and contain a panic from a race.
    tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("admin endpoint {addr} not answering"))?;
    let task = tokio::spawn(async move { sluice_e2e::http_get(addr, path).await });
    task.await
        .map_err(|_| anyhow::anyhow!("admin endpoint {addr} not answering"))
}

/// The sum of counter `name` over its series, optionally only those with
/// label `outcome="<outcome>"`.
pub fn counter_sum(metrics: &str, name: &str, outcome: Option<&str>) -> u64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            if metric != name {
                return None;
            }
            if let Some(o) = outcome
                && !series.contains(&format!("outcome=\"{o}\""))
            {
                return None;
            }
            value.parse::<f64>().ok().map(|v| v as u64)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# HELP sluice_events_handled Handler attempts\n\
# TYPE sluice_events_handled counter\n\
sluice_events_handled_total{plugin=\"a\",outcome=\"ok\"} 10\n\
sluice_events_handled_total{plugin=\"b\",outcome=\"ok\"} 5\n\
sluice_events_handled_total{plugin=\"b\",outcome=\"trap\"} 2\n\
sluice_events_received_total{plugin=\"a\"} 99\n\
sluice_nats_reconnects_total 0\n";

    #[test]
    fn counters_are_summed_by_name_and_outcome() {
        assert_eq!(
            counter_sum(SAMPLE, "sluice_events_handled_total", Some("ok")),
            15
        );
        assert_eq!(counter_sum(SAMPLE, "sluice_events_handled_total", None), 17);
        assert_eq!(
            counter_sum(SAMPLE, "sluice_events_received_total", None),
            99
        );
        assert_eq!(counter_sum(SAMPLE, "sluice_nats_reconnects_total", None), 0);
        assert_eq!(counter_sum(SAMPLE, "missing", None), 0);
    }

    #[test]
    fn config_text_sets_admin_cache_and_extra() {
        let cfg = HostConfig {
            nats_url: "nats://127.0.0.1:1".into(),
            plugins: "/tmp/p".into(),
            compile_cache: None,
            extra: "max_concurrency = 64".into(),
            log: "info".into(),
        };
        let text = cfg.render("127.0.0.1:9".parse().unwrap());
        assert!(text.contains("admin_addr = \"127.0.0.1:9\""));
        assert!(text.contains("log = \"info\""));
        assert!(text.contains("compile_cache = \"off\""));
        assert!(text.ends_with("max_concurrency = 64\n"));
        let parsed: sluice::config::FileConfig = toml::from_str(&text).unwrap();
        assert_eq!(parsed.max_concurrency, Some(64));
    }
}
