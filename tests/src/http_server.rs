//! A small real HTTP/1.1 server on loopback for the outbound HTTP tests: it
//! answers each request with what a test's handler says (status, headers,
//! body, a delay before answering, a chunked body) and records every request
//! it received, so a test can check what a plugin really sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers, names in lower case.
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub body: Vec<u8>,
}

impl Received {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Send the body chunked (no `Content-Length`).
    pub chunked: bool,
}

impl Reply {
    /// `status` with `body`, at once.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            body: body.into(),
            headers: Vec::new(),
            delay: Duration::ZERO,
            chunked: false,
        }
    }

    /// The same, after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// The same, with the body chunked.
    pub fn chunked(mut self) -> Reply {
        self.chunked = true;
        self
    }
}

type Handler = dyn Fn(&Received, &[Received]) -> Reply + Send + Sync;

/// A running test server; stops when dropped.
pub struct TestHttpServer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestHttpServer {
    /// Serve on a free loopback port; `handler` gets each request and the
    /// ones received before it.
    pub async fn start(
        handler: impl Fn(&Received, &[Received]) -> Reply + Send + Sync + 'static,
    ) -> TestHttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let task = {
            let received = received.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let received = received.clone();
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let _ = serve(stream, &received, &*handler).await;
                    });
                }
            })
        };
        TestHttpServer {
            addr,
            received,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("received lock").clone()
    }
}

impl Drop for TestHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    received: &Mutex<Vec<Received>>,
    handler: &Handler,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    read.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    read.read_exact(&mut body).await?;
    let request = Received {
        method,
        path,
        headers,
        body,
    };
    let reply = {
        let mut all = received.lock().expect("received lock");
        let reply = handler(&request, &all);
        all.push(request);
        reply
    };
    tokio::time::sleep(reply.delay).await;
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if reply.chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        write.write_all(head.as_bytes()).await?;
        for chunk in reply.body.chunks(1024) {
            write
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            write.write_all(chunk).await?;
            write.write_all(b"\r\n").await?;
        }
        write.write_all(b"0\r\n\r\n").await?;
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", reply.body.len()));
        write.write_all(head.as_bytes()).await?;
        write.write_all(&reply.body).await?;
    }
    write.shutdown().await
}
