//! The end-to-end test harness: a real nats-server per test (random port,
//! JetStream on, temp store, killed on drop), the plugins built from source in
//! plugins/ once per test run, plugin folders in temp dirs, and a real host.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice::config::{self, FileConfig, Overrides};
use sluice::service::{self, HostHandle};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The nats-server binary: `$NATS_SERVER_BIN`, the copy `make test` installs
/// under .tools/, or `nats-server` on PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return bin.into();
    }
    let local = repo_root().join(".tools/nats-server/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// A nats-server child process with JetStream and a temp store; killed on drop.
pub struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Start a server on a free loopback port and wait until it accepts connections.
    pub fn start() -> NatsServer {
        Self::start_with("")
    }

    /// Start a server with extra config text appended to the generated config.
    pub fn start_with(extra_config: &str) -> NatsServer {
        for _ in 0..5 {
            let port = free_port();
            let store = tempfile::tempdir().expect("temp dir");
            let conf = store.path().join("nats.conf");
            std::fs::write(
                &conf,
                format!(
                    "listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n}}\n{extra_config}\n",
                    store.path().join("js").display()
                ),
            )
            .unwrap();
            let child = Command::new(nats_server_bin())
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {:?}: {e}. Run `make test`, which installs nats-server, or set NATS_SERVER_BIN",
                        nats_server_bin()
                    )
                });
            let mut server = NatsServer {
                child,
                port,
                _store: store,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // port taken or bad config: try another port
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = server.child.kill();
        }
        panic!("nats-server did not start (tried 5 ports)");
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A connected client.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("test client connects")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The folder holding the built plugin components (`<crate>.wasm`). Builds
/// plugins/ for wasm32-wasip2 once per test process, into plugins/target.
pub fn built_plugins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(root.join("plugins/target"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("running cargo to build plugins/");
        assert!(status.success(), "building plugins/ for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)");
        root.join("plugins/target/wasm32-wasip2/release")
    })
}

/// The built component of plugin crate `name` (dashes become underscores).
pub fn plugin_wasm(name: &str) -> PathBuf {
    built_plugins().join(format!("{}.wasm", name.replace('-', "_")))
}

/// A temporary plugin folder.
pub struct PluginDir {
    dir: tempfile::TempDir,
}

impl Default for PluginDir {
    fn default() -> Self {
        Self::new()
    }
}

impl PluginDir {
    /// An empty folder.
    pub fn new() -> PluginDir {
        PluginDir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Install built plugin `crate_name` as `name` with `manifest` text.
    pub fn add(&self, name: &str, crate_name: &str, manifest: &str) -> &Self {
        std::fs::copy(
            plugin_wasm(crate_name),
            self.path().join(format!("{name}.wasm")),
        )
        .expect("copy plugin");
        self.write(&format!("{name}.toml"), manifest.as_bytes())
    }

    /// Write any file into the folder.
    pub fn write(&self, file: &str, bytes: &[u8]) -> &Self {
        std::fs::write(self.path().join(file), bytes).expect("write plugin file");
        self
    }
}

/// Start a host in-process for `plugins`, and wait until it is subscribed.
pub async fn start_host(nats_url: &str, plugins: &Path) -> HostHandle {
    start_host_with(nats_url, plugins, "").await
}

/// Like [`start_host`], with `config` as the host's config file (TOML), e.g.
/// limits or `[plugin.<name>]` rules. `max_instances` defaults to 64.
pub async fn start_host_with(nats_url: &str, plugins: &Path, config: &str) -> HostHandle {
    let file: FileConfig = toml::from_str(config).expect("valid test host config");
    let overrides = Overrides {
        nats_url: Some(nats_url.to_string()),
        plugins: Some(plugins.to_path_buf()),
        max_instances: file.max_instances.is_none().then_some(64),
        ..Overrides::default()
    };
    let settings = config::resolve(&overrides, file).expect("valid test settings");
    sluice::telemetry::init(settings.log_format, "warn,sluice=info");
    let mut host = service::start(settings).await.expect("host starts");
    tokio::time::timeout(Duration::from_secs(30), host.ready())
        .await
        .expect("host ready within 30s");
    host
}

/// Poll `condition` every 10 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Receive the next message of `sub` within `timeout`, or panic naming `what`.
pub async fn next_message(
    sub: &mut async_nats::Subscriber,
    timeout: Duration,
    what: &str,
) -> async_nats::Message {
    use futures::StreamExt;
    tokio::time::timeout(timeout, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no message within {timeout:?}: {what}"))
        .expect("subscription open")
}
