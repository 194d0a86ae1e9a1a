//! The end-to-end test harness: a real nats-server per test (random port,
//! JetStream on, temp store, killed on drop), the plugins built from source in
//! plugins/ once per test run, plugin folders in temp dirs, and a real host.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use sluice::config::{self, FileConfig, Overrides};
use sluice::service::{self, HostHandle};

pub mod cluster;
pub mod fault_proxy;
pub mod http_server;
pub mod neighbours;
pub mod polyglot;

pub use cluster::NatsCluster;

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
    conf: PathBuf,
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
            let mut server = NatsServer {
                child: spawn_nats_server(&conf),
                port,
                conf,
                _store: store,
            };
            if server.wait_listening() {
                return server;
            }
            let _ = server.child.kill();
        }
        panic!("nats-server did not start (tried 5 ports)");
    }

    /// Wait (10 s at most) until the server accepts connections; false if it exited.
    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false; // port taken or bad config
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kill the server (its JetStream store is kept for [`NatsServer::restart`]).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the server again on the same port with the same config and store.
    pub fn restart(&mut self) {
        self.child = spawn_nats_server(&self.conf);
        assert!(
            self.wait_listening(),
            "nats-server did not restart on port {}",
            self.port
        );
    }

    /// The folder of the server's config and store (for extra files such as certificates).
    pub fn dir(&self) -> &Path {
        self._store.path()
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A connected client. A connection the server resets while it starts
    /// on a loaded machine (seen once in a stress run: "connection reset by
    /// peer" right after the port accepted) is tried again for up to 10 s.
    pub async fn client(&self) -> async_nats::Client {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match async_nats::connect(self.url()).await {
                Ok(client) => return client,
                Err(e)
                    if e.kind() == async_nats::ConnectErrorKind::Io
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("test client connects to {}: {e:?}", self.url()),
            }
        }
    }
}

/// Spawn nats-server with config file `conf` (output discarded).
pub(crate) fn spawn_nats_server(conf: &Path) -> Child {
    Command::new(nats_server_bin())
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {:?}: {e}. Run `make test`, which installs nats-server, or set NATS_SERVER_BIN",
                nats_server_bin()
            )
        })
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `component` with a custom section appended: the same behaviour, another
/// content hash (a new "version" for deploy tests).
pub fn variant(component: &[u8], tag: u32) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"sluice-test-variant";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(&tag.to_le_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// The version hash the host gives `bytes`.
pub fn version_of(bytes: &[u8]) -> String {
    sluice::engine::component::version_hash(bytes)
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

    /// Install the component at `wasm` as `name` with `manifest` text (for
    /// plugins built elsewhere, e.g. [`polyglot::polyglot_wasm`]).
    pub fn add_file(&self, name: &str, wasm: &Path, manifest: &str) -> &Self {
        std::fs::copy(wasm, self.path().join(format!("{name}.wasm"))).expect("copy plugin");
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
    start_host_with(Overrides {
        nats_url: Some(nats_url.to_string()),
        plugins: Some(plugins.to_path_buf()),
        ..Overrides::default()
    })
    .await
}

/// Like [`start_host`], with settings adjusted by `adjust`.
pub async fn start_host_adjusted(
    nats_url: &str,
    plugins: &Path,
    adjust: impl FnOnce(&mut Overrides),
) -> HostHandle {
    let mut overrides = Overrides {
        nats_url: Some(nats_url.to_string()),
        plugins: Some(plugins.to_path_buf()),
        ..Overrides::default()
    };
    adjust(&mut overrides);
    start_host_with(overrides).await
}

/// Like [`start_host`], with `config` as the host's config file (TOML), e.g.
/// limits or `[plugin.<name>]` rules.
pub async fn start_host_configured(nats_url: &str, plugins: &Path, config: &str) -> HostHandle {
    let file: FileConfig = toml::from_str(config).expect("valid test host config");
    let overrides = Overrides {
        nats_url: Some(nats_url.to_string()),
        plugins: Some(plugins.to_path_buf()),
        ..Overrides::default()
    };
    start_host_from(overrides, file).await
}

/// Like [`start_host_configured`], waiting up to 5 minutes for the host to
/// be ready (for interpreter plugins, see [`start_host_patient`]).
pub async fn start_host_configured_patient(
    nats_url: &str,
    plugins: &Path,
    config: &str,
) -> HostHandle {
    let file: FileConfig = toml::from_str(config).expect("valid test host config");
    let overrides = Overrides {
        nats_url: Some(nats_url.to_string()),
        plugins: Some(plugins.to_path_buf()),
        ..Overrides::default()
    };
    start_host_within(overrides, file, Duration::from_secs(300)).await
}

/// Start a host in-process with `overrides` (64 instances unless set), and
/// wait until it is subscribed.
pub async fn start_host_with(overrides: Overrides) -> HostHandle {
    start_host_from(overrides, FileConfig::default()).await
}

/// Like [`start_host`], waiting up to 5 minutes for the host to be ready:
/// for interpreter plugins (10 to 20 MB components), whose first compile
/// takes tens of seconds on a busy machine (later starts load it from the
/// compile cache).
pub async fn start_host_patient(nats_url: &str, plugins: &Path) -> HostHandle {
    let overrides = Overrides {
        nats_url: Some(nats_url.to_string()),
        plugins: Some(plugins.to_path_buf()),
        ..Overrides::default()
    };
    start_host_within(overrides, FileConfig::default(), Duration::from_secs(300)).await
}

/// Start a host from flag-level `overrides` over a config `file` (64
/// instances unless either sets it), and wait until it is subscribed.
async fn start_host_from(overrides: Overrides, file: FileConfig) -> HostHandle {
    start_host_within(overrides, file, Duration::from_secs(30)).await
}

async fn start_host_within(
    mut overrides: Overrides,
    file: FileConfig,
    ready_within: Duration,
) -> HostHandle {
    if file.max_instances.is_none() {
        overrides.max_instances = overrides.max_instances.or(Some(64));
    }
    let settings = config::resolve(&overrides, file).expect("valid test settings");
    sluice::telemetry::init(settings.log_format, "warn,sluice=info");
    let mut host = service::start(settings).await.expect("host starts");
    tokio::time::timeout(ready_within, host.ready())
        .await
        .unwrap_or_else(|_| panic!("host not ready within {ready_within:?}"));
    host
}

/// GET `path` from an HTTP server at `addr`: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the admin endpoint {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("admin endpoint answers within 10s")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// A command for the `sluice` binary `bin` (pass
/// `env!("CARGO_BIN_EXE_sluice-e2e-host")`), with no SLUICE_* or RUST_LOG inherited.
pub fn sluice_command(bin: &str) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars() {
        if key.starts_with("SLUICE_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Poll an async condition (an expression that may `.await`) every 20 ms
/// until it holds or `$timeout` passes, then panic naming `$what`.
#[macro_export]
macro_rules! eventually_async {
    ($timeout:expr, $what:expr, $cond:expr) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {:?} waiting for: {}",
                $timeout,
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// Wait until `host` has finished its background setup: the conditions
/// `/readyz` lists besides NATS and the plugins (the dedup store's KV bucket,
/// the DLQ stream) are clear. A host is ready once it is subscribed; until
/// its bucket opens, a core event runs without a dedup record and a
/// JetStream event is handed back for redelivery (one more delivery in the
/// counters). Tests that count deliveries or records wait for this first.
pub async fn setup_done(host: &sluice::service::HostHandle) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let problems = host.problems();
        if problems.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the host's background setup did not finish within 30s: {problems:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Start a host on an empty plugin folder, wait for its background setup,
/// then add plugin `name` (built from `crate_name`, with `manifest`) and
/// wait until it serves. For tests whose events wait in a stream before the
/// host starts: the plugin consumes them only once the dedup store and the
/// DLQ are there, so no first delivery is handed back meanwhile.
pub async fn start_host_then_add(
    nats_url: &str,
    dir: &PluginDir,
    (name, crate_name, manifest): (&str, &str, &str),
) -> sluice::service::HostHandle {
    let host = start_host_configured(nats_url, dir.path(), "").await;
    setup_done(&host).await;
    dir.add(name, crate_name, manifest);
    eventually(
        Duration::from_secs(60),
        &format!("plugin `{name}` serving"),
        || {
            host.plugins()
                .iter()
                .any(|p| p.name == name && p.state == "serving")
        },
    )
    .await;
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

/// Wait until the server has processed everything `client` sent so far,
/// its subscriptions included (`flush` only empties the client's own
/// buffer): a probe published on the same connection comes back.
pub async fn synced(client: &async_nats::Client) {
    let subject = format!("probe.{}", client.new_inbox());
    let mut probe = client.subscribe(subject.clone()).await.expect("subscribe");
    client
        .publish(subject, bytes::Bytes::from_static(b"probe"))
        .await
        .expect("publish");
    next_message(&mut probe, Duration::from_secs(30), "the probe comes back").await;
}

/// Subscribe `client` to `subject`; the subscription is in place on the
/// server when this returns, so nothing published afterwards is missed.
pub async fn subscribed(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    let sub = client
        .subscribe(subject.to_string())
        .await
        .expect("subscribe");
    synced(client).await;
    sub
}

/// Create a JetStream stream capturing `subjects` (duplicate window 10 min).
pub async fn create_stream(js: &async_nats::jetstream::Context, name: &str, subjects: &[&str]) {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.to_string(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("creating stream {name}: {e}"));
}

/// Messages currently in stream `name`.
pub async fn stream_messages(js: &async_nats::jetstream::Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.expect("stream exists");
    stream.info().await.expect("stream info").state.messages
}

/// (pending, ack pending) of a durable consumer.
pub async fn consumer_backlog(
    js: &async_nats::jetstream::Context,
    stream: &str,
    durable: &str,
) -> (u64, usize) {
    let stream = js.get_stream(stream).await.expect("stream exists");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(durable).await.expect("consumer exists");
    let info = consumer.info().await.expect("consumer info");
    (info.num_pending, info.num_ack_pending)
}

/// Every message of stream `name`, in order.
pub async fn read_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Vec<async_nats::jetstream::Message> {
    use futures::StreamExt;
    let total = stream_messages(js, name).await as usize;
    let stream = js.get_stream(name).await.expect("stream exists");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("stream read in time")
            .expect("stream open")
            .expect("message");
        out.push(next);
    }
    out
}

/// A running `sluice` binary whose stderr lines arrive on a channel; killed on drop.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// Spawn `cmd` capturing stderr.
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sluice");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// Wait for a log line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!(
            "no log line containing `{needle}` within {timeout:?}; saw:\n{}",
            seen.join("\n")
        );
    }

    /// Send signal `name` (e.g. `TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// Wait for the process to exit within `timeout`; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn wait_exit_now(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Every stderr line received so far (and not yet consumed by `wait_for`).
    pub fn drain_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM and wait (15 s at most) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(15))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
