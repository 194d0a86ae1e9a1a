//! A three-node nats-server cluster on loopback for scale-out tests: routes
//! between the nodes, JetStream on each with its own store, random ports for
//! the client, cluster and monitoring listeners, every node killed on drop.
//!
//! Starting returns only once every node sees the same JetStream meta leader
//! and answers its health check (`/healthz`, which in a cluster also waits
//! for the node's JetStream assets to be current), so a test's first stream
//! creation never races the election. A node can be stopped (SIGKILL, the
//! store kept) and restarted on the same ports.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::{free_port, spawn_nats_server};

/// Nodes in the cluster.
pub const NODES: usize = 3;
/// How long a start may take to elect a leader and turn healthy.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long a restarted node may take to rejoin: it catches up on every
/// stream it replicates first, which a loaded machine slows down.
const REJOINED_WITHIN: Duration = Duration::from_secs(60);

/// One node: its ports, config, store and process.
struct Node {
    name: String,
    client_port: u16,
    monitor_port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

/// A three-node JetStream cluster; every node is killed on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Start three routed nodes on free loopback ports and wait until
    /// JetStream has a meta leader every node agrees on and each is healthy.
    pub fn start() -> NatsCluster {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(cluster) => return cluster,
                Err(why) => last = why,
            }
        }
        panic!("the three-node nats-server cluster did not start (3 tries): {last}");
    }

    fn try_start() -> Result<NatsCluster, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16, u16)> = (0..NODES)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes = ports
            .iter()
            .map(|(_, cluster, _)| format!("\"nats-route://127.0.0.1:{cluster}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for (i, (client_port, cluster_port, monitor_port)) in ports.into_iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client_port}\nhttp: 127.0.0.1:{monitor_port}\nmax_payload: 8MB\n\
                     jetstream {{\n  store_dir: \"{}\"\n}}\n\
                     cluster {{\n  name: sluice-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{routes}]\n}}\n",
                    store.display()
                ),
            )
            .expect("write node config");
            nodes.push(Node {
                name,
                client_port,
                monitor_port,
                conf,
                child: None,
            });
        }
        let mut cluster = NatsCluster { nodes, _dir: dir };
        for node in &mut cluster.nodes {
            node.child = Some(spawn_nats_server(&node.conf));
        }
        cluster.wait_ready(READY_WITHIN)?;
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        (0..NODES)
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of node `i` (0-based).
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// A client connected to every node (it fails over between them).
    pub async fn client(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = (0..NODES)
            .map(|i| self.url(i).parse().expect("server address"))
            .collect();
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(addrs)
            .await
            .expect("test client connects to the cluster")
    }

    /// The name of the current JetStream meta leader, as node `i` sees it.
    pub fn meta_leader(&self, i: usize) -> Option<String> {
        let jsz = http_json(self.nodes[i].monitor_port, "/jsz").ok()?;
        jsz.pointer("/meta_cluster/leader")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// Index of the node whose server name is `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Kill node `i` (SIGKILL; its store is kept for [`NatsCluster::restart`]).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start node `i` again with its config and store, and wait until the
    /// cluster has a leader again and every running node is healthy.
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.nodes[i].child.is_none(),
            "node {} is running",
            self.nodes[i].name
        );
        self.nodes[i].child = Some(spawn_nats_server(&self.nodes[i].conf));
        if let Err(why) = self.wait_ready(REJOINED_WITHIN) {
            panic!("node {} did not rejoin: {why}", self.nodes[i].name);
        }
    }

    /// Wait until every running node sees the same meta leader and reports
    /// healthy; the reason if not within `within`.
    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let why = match self.readiness() {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn readiness(&mut self) -> Result<(), String> {
        let mut leaders = Vec::new();
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("node {} exited: {status}", node.name));
            }
            let health = http_json(node.monitor_port, "/healthz")
                .map_err(|e| format!("node {}: {e}", node.name))?;
            if health.get("status").and_then(|s| s.as_str()) != Some("ok") {
                return Err(format!("node {} not healthy: {health}", node.name));
            }
            let jsz = http_json(node.monitor_port, "/jsz")
                .map_err(|e| format!("node {}: {e}", node.name))?;
            let leader = jsz
                .pointer("/meta_cluster/leader")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            if leader.is_empty() {
                return Err(format!("node {} sees no meta leader yet", node.name));
            }
            leaders.push(leader);
        }
        if leaders.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!("nodes disagree on the meta leader: {leaders:?}"));
        }
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }
}

/// GET `path` from the monitoring port and parse the JSON body.
fn http_json(port: u16, path: &str) -> Result<serde_json::Value, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("not an HTTP response")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    serde_json::from_str(body.trim()).map_err(|e| format!("{path}: {e}: {body}"))
}

/// The body of a chunked HTTP response.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}
