//! A TCP fault proxy between a client (the host, a CLI, a test client) and
//! nats-server, for tests of what the host does when the broker misbehaves.
//!
//! The faults that lose, duplicate or strand events are not "the server is
//! down" (easy to test by killing it) but the in-between states: a reply that
//! never arrives although the request landed (the *ambiguous write*), a
//! broker that answers slowly, a connection that stalls or is cut mid-flight.
//! The proxy produces each of them on command, deterministically:
//!
//! ```no_run
//! # async fn demo() {
//! use sluice_e2e::{NatsServer, fault_proxy::FaultProxy};
//! let server = NatsServer::start();
//! let proxy = FaultProxy::start(&server.url()).await;
//! let client = async_nats::connect(proxy.url()).await.unwrap(); // through the proxy
//! proxy.drop_replies(); // requests land, their replies are lost
//! proxy.pause();        // bytes are held in both directions
//! proxy.delay(std::time::Duration::from_millis(200)); // each chunk waits 200 ms
//! proxy.pass();         // resume: held bytes flow, new bytes pass at once
//! proxy.cut();          // close every current connection (the client reconnects)
//! proxy.refuse(true);   // ...and close new ones at once, until `refuse(false)`
//!
//! // Faults for one kind of request only (subject prefix), the rest flows:
//! proxy.lose_replies_to("$KV.dedup.");  // a KV write lands, its ack is lost
//! proxy.lose_requests_to("sluice.dlq."); // DLQ publishes never reach the server
//! proxy.delay_replies_to("$JS.API.DIRECT.GET.", std::time::Duration::from_secs(2)); // slow KV reads
//! proxy.clear_rules();
//! # }
//! ```
//!
//! The host has one NATS connection for everything (subscriptions, KV, DLQ,
//! outbox), so whole-connection modes hit all of it at once; the per-subject
//! rules are what make "the KV write landed but its reply was lost, and the
//! next read works" reproducible. The proxy follows the NATS text protocol
//! to apply them: a client request (`PUB`/`HPUB` on a subject starting with
//! the rule's prefix, with a reply subject) marks its reply subject, and the
//! server's message to that subject (`MSG`/`HMSG`) is dropped or delayed
//! whole. Requests are matched when they pass through, so set a rule before
//! the request is sent; each marked reply is acted on once. Poll
//! [`FaultProxy::replies_lost`] / [`FaultProxy::requests_lost`] to know a
//! rule fired. (A connection the proxy cannot follow, TLS for example, is
//! forwarded as raw bytes and only the whole-connection modes apply.)
//!
//! Semantics, chosen so tests can reason about them:
//! - A mode applies to every chunk *read* after the mode is set, on every
//!   connection, in the direction(s) it names. Pausing holds the chunk in
//!   hand and stops reading, so TCP backpressure holds the rest.
//! - [`FaultProxy::drop_replies`] discards every server→client protocol
//!   message (whole ones: the client never sees half a message, so it carries
//!   on once the mode ends; it notices nothing but silence, including
//!   unanswered PINGs) and passes client→server ones.
//! - A delayed message delays everything behind it on its connection (TCP
//!   keeps order).
//! - Nothing sleeps to hope: poll [`FaultProxy::connections`] and
//!   [`FaultProxy::accepted`] (with the harness's `eventually`) to know that
//!   a client noticed a cut or reconnected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward at once.
    Pass,
    /// Hold in both directions until the mode changes.
    Pause,
    /// Forward each chunk after this delay.
    Delay(Duration),
    /// Forward client→server; discard server→client (requests land, replies are lost).
    DropReplies,
}

/// What a per-subject rule does to matching requests or their replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// The request never reaches the server.
    LoseRequest,
    /// The request lands; its reply is dropped.
    LoseReply,
    /// The request lands; its reply is forwarded after this delay.
    DelayReply(Duration),
}

#[derive(Debug)]
struct Control {
    /// (subject prefix, rule), first match wins.
    rules: Mutex<Vec<(String, Rule)>>,
    /// Reply subjects of matched requests, and what to do with the reply.
    marked: Mutex<HashMap<String, Rule>>,
    requests_lost: AtomicU64,
    replies_lost: AtomicU64,
    mode: watch::Sender<Mode>,
    /// Bumped by `cut`: every connection older than the new value closes.
    generation: watch::Sender<u64>,
    refuse: AtomicBool,
    live: AtomicUsize,
    accepted: AtomicU64,
    dropped_bytes: AtomicU64,
}

/// A running proxy on a random loopback port; stops (closing every
/// connection) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    control: Arc<Control>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Start a proxy in front of `upstream` (a `nats://host:port` URL or
    /// `host:port`), passing everything through.
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .trim_start_matches("nats://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fault proxy binds a loopback port");
        let addr = listener.local_addr().expect("fault proxy address");
        let control = Arc::new(Control {
            rules: Mutex::default(),
            marked: Mutex::default(),
            requests_lost: AtomicU64::new(0),
            replies_lost: AtomicU64::new(0),
            mode: watch::Sender::new(Mode::Pass),
            generation: watch::Sender::new(0),
            refuse: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, control.clone()));
        FaultProxy {
            addr,
            control,
            accept,
        }
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forward everything at once; held bytes flow again (resume).
    pub fn pass(&self) {
        self.control.mode.send_replace(Mode::Pass);
    }

    /// Hold bytes in both directions until another mode is set.
    pub fn pause(&self) {
        self.control.mode.send_replace(Mode::Pause);
    }

    /// Forward each chunk `delay` after it was read, in both directions.
    pub fn delay(&self, delay: Duration) {
        self.control.mode.send_replace(Mode::Delay(delay));
    }

    /// Let requests through but lose every server→client byte: the
    /// ambiguous write (see the module docs for what happens afterwards).
    pub fn drop_replies(&self) {
        self.control.mode.send_replace(Mode::DropReplies);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.control.mode.borrow()
    }

    /// Close every current connection (held bytes are lost). New connections
    /// are accepted unless [`refuse`](Self::refuse) is on.
    pub fn cut(&self) {
        self.control.generation.send_modify(|g| *g += 1);
    }

    /// While `refuse` is on, new connections are closed as soon as they are
    /// accepted (the broker looks down). Current ones are not touched; call
    /// [`cut`](Self::cut) too for a full outage.
    pub fn refuse(&self, refuse: bool) {
        self.control.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Connections open through the proxy right now.
    pub fn connections(&self) -> usize {
        self.control.live.load(Ordering::SeqCst)
    }

    /// Connections forwarded so far (a client that reconnected adds one).
    pub fn accepted(&self) -> u64 {
        self.control.accepted.load(Ordering::SeqCst)
    }

    /// Server→client bytes discarded by [`drop_replies`](Self::drop_replies).
    pub fn dropped_bytes(&self) -> u64 {
        self.control.dropped_bytes.load(Ordering::SeqCst)
    }

    /// Requests on subjects starting with `prefix` land, but their replies
    /// are lost (the ambiguous write), until [`clear_rules`](Self::clear_rules).
    pub fn lose_replies_to(&self, prefix: &str) {
        self.rule(prefix, Rule::LoseReply);
    }

    /// Messages on subjects starting with `prefix` never reach the server
    /// (that service is down), until [`clear_rules`](Self::clear_rules).
    pub fn lose_requests_to(&self, prefix: &str) {
        self.rule(prefix, Rule::LoseRequest);
    }

    /// Replies to requests on subjects starting with `prefix` arrive `delay`
    /// late (a slow service), until [`clear_rules`](Self::clear_rules).
    pub fn delay_replies_to(&self, prefix: &str, delay: Duration) {
        self.rule(prefix, Rule::DelayReply(delay));
    }

    /// Remove every per-subject rule (replies already marked are still
    /// acted on when they come).
    pub fn clear_rules(&self) {
        self.control.rules.lock().unwrap().clear();
    }

    /// Replies dropped by [`lose_replies_to`](Self::lose_replies_to) so far.
    pub fn replies_lost(&self) -> u64 {
        self.control.replies_lost.load(Ordering::SeqCst)
    }

    /// Messages dropped by [`lose_requests_to`](Self::lose_requests_to) so far.
    pub fn requests_lost(&self) -> u64 {
        self.control.requests_lost.load(Ordering::SeqCst)
    }

    fn rule(&self, prefix: &str, rule: Rule) {
        self.control
            .rules
            .lock()
            .unwrap()
            .push((prefix.to_string(), rule));
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, control: Arc<Control>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if control.refuse.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(&upstream).await else {
            drop(client); // upstream down: the client sees a refused connection
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        control.accepted.fetch_add(1, Ordering::SeqCst);
        control.live.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(connection(client, server, control.clone()));
    }
}

/// Pump both directions of one connection until either side closes or the
/// connection is cut; then close both.
async fn connection(client: TcpStream, server: TcpStream, control: Arc<Control>) {
    let born = *control.generation.borrow();
    let mut generation = control.generation.subscribe();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, Direction::Up, control.clone());
    let down = pump(server_read, client_write, Direction::Down, control.clone());
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = generation.wait_for(|g| *g != born) => {}
    }
    control.live.fetch_sub(1, Ordering::SeqCst);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// client → server
    Up,
    /// server → client
    Down,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    direction: Direction,
    control: Arc<Control>,
) {
    let mut mode = control.mode.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    let mut framer = Framer::default();
    let mut lost_bytes = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Wait out a pause; act on the mode in force once it ends.
        let current = match mode.wait_for(|m| *m != Mode::Pause).await {
            Ok(m) => *m,
            Err(_) => return,
        };
        if let Mode::Delay(delay) = current {
            tokio::time::sleep(delay).await;
        }
        framer.push(&buf[..n]);
        while let Some(unit) = framer.next_unit() {
            let drop_all = current == Mode::DropReplies && direction == Direction::Down;
            if drop_all || lost_bytes {
                if unit.raw {
                    // Part of the protocol stream is gone: close rather than
                    // hand the client the middle of a message later.
                    lost_bytes = true;
                    if !drop_all {
                        return;
                    }
                }
                control
                    .dropped_bytes
                    .fetch_add(unit.bytes.len() as u64, Ordering::SeqCst);
                continue;
            }
            match control.verdict(direction, &unit) {
                Verdict::Forward => {}
                Verdict::Drop => continue,
                Verdict::Delay(delay) => tokio::time::sleep(delay).await,
            }
            if to.write_all(&unit.bytes).await.is_err() {
                return;
            }
        }
    }
}

enum Verdict {
    Forward,
    Drop,
    Delay(Duration),
}

impl Control {
    /// What the per-subject rules make of `unit`.
    fn verdict(&self, direction: Direction, unit: &Unit) -> Verdict {
        let Some(subject) = unit.subject.as_deref() else {
            return Verdict::Forward;
        };
        match direction {
            Direction::Up => {
                let rule = self
                    .rules
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(prefix, _)| subject.starts_with(prefix.as_str()))
                    .map(|(_, rule)| *rule);
                match (rule, unit.reply.as_deref()) {
                    (Some(Rule::LoseRequest), _) => {
                        self.requests_lost.fetch_add(1, Ordering::SeqCst);
                        Verdict::Drop
                    }
                    (Some(rule), Some(reply)) => {
                        self.marked.lock().unwrap().insert(reply.to_string(), rule);
                        Verdict::Forward
                    }
                    _ => Verdict::Forward,
                }
            }
            Direction::Down => match self.marked.lock().unwrap().remove(subject) {
                Some(Rule::LoseReply) => {
                    self.replies_lost.fetch_add(1, Ordering::SeqCst);
                    Verdict::Drop
                }
                Some(Rule::DelayReply(delay)) => Verdict::Delay(delay),
                _ => Verdict::Forward,
            },
        }
    }
}

/// One protocol operation (or, once the stream could not be followed, a run
/// of raw bytes).
struct Unit {
    bytes: Vec<u8>,
    /// The subject of a `PUB`, `HPUB`, `MSG` or `HMSG`.
    subject: Option<String>,
    /// Its reply subject, if any.
    reply: Option<String>,
    raw: bool,
}

/// Splits a NATS text-protocol byte stream into whole operations.
#[derive(Default)]
struct Framer {
    buf: Vec<u8>,
    /// The stream did not parse (TLS, say): pass bytes through as they come.
    raw: bool,
}

/// A control line longer than this means the stream is not NATS text.
const MAX_LINE: usize = 1 << 20;

impl Framer {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next_unit(&mut self) -> Option<Unit> {
        if self.buf.is_empty() {
            return None;
        }
        if !self.raw {
            match self.parse() {
                Ok(Some(unit)) => return Some(unit),
                Ok(None) => return None, // incomplete: wait for more bytes
                Err(()) => self.raw = true,
            }
        }
        Some(Unit {
            bytes: std::mem::take(&mut self.buf),
            subject: None,
            reply: None,
            raw: true,
        })
    }

    fn parse(&mut self) -> Result<Option<Unit>, ()> {
        let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
            return if self.buf.len() > MAX_LINE {
                Err(())
            } else {
                Ok(None)
            };
        };
        let line = std::str::from_utf8(&self.buf[..eol]).map_err(|_| ())?;
        let tokens: Vec<&str> = line.split_ascii_whitespace().collect();
        let op = tokens
            .first()
            .map(|t| t.to_ascii_uppercase())
            .unwrap_or_default();
        // (tokens without a reply, index of the reply when present)
        let shape = match op.as_str() {
            "PUB" => Some((3, 2)),
            "HPUB" => Some((4, 2)),
            "MSG" => Some((4, 3)),
            "HMSG" => Some((5, 3)),
            _ => None,
        };
        let (len, subject, reply) = match shape {
            None => (eol + 2, None, None),
            Some((plain, reply_at)) => {
                if tokens.len() != plain && tokens.len() != plain + 1 {
                    return Err(());
                }
                let size: usize = tokens[tokens.len() - 1].parse().map_err(|_| ())?;
                let reply = (tokens.len() == plain + 1).then(|| tokens[reply_at].to_string());
                (eol + 2 + size + 2, Some(tokens[1].to_string()), reply)
            }
        };
        if self.buf.len() < len {
            return Ok(None);
        }
        let rest = self.buf.split_off(len);
        let bytes = std::mem::replace(&mut self.buf, rest);
        Ok(Some(Unit {
            bytes,
            subject,
            reply,
            raw: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(chunks: &[&[u8]]) -> Vec<(String, Option<String>, Option<String>, bool)> {
        let mut framer = Framer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk);
            while let Some(u) = framer.next_unit() {
                out.push((
                    String::from_utf8_lossy(&u.bytes).into_owned(),
                    u.subject,
                    u.reply,
                    u.raw,
                ));
            }
        }
        out
    }

    #[test]
    fn the_framer_splits_operations_across_chunks() {
        let got = units(&[
            b"PING\r\nPUB a.b _INBOX.x 5\r\nhel",
            b"lo\r\nHPUB k r 12 14\r\nNATS/1.0\r\n\r\nhi\r\nMSG _INBOX.x 1 2\r\nok\r\n",
            b"HMSG s 2 r2 12 12\r\nNATS/1.0\r\n\r\n\r\n",
        ]);
        let view: Vec<(&str, Option<&str>, Option<&str>)> = got
            .iter()
            .map(|(b, s, r, raw)| {
                assert!(!raw);
                (b.as_str(), s.as_deref(), r.as_deref())
            })
            .collect();
        assert_eq!(
            view,
            [
                ("PING\r\n", None, None),
                (
                    "PUB a.b _INBOX.x 5\r\nhello\r\n",
                    Some("a.b"),
                    Some("_INBOX.x")
                ),
                (
                    "HPUB k r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
                    Some("k"),
                    Some("r")
                ),
                ("MSG _INBOX.x 1 2\r\nok\r\n", Some("_INBOX.x"), None),
                (
                    "HMSG s 2 r2 12 12\r\nNATS/1.0\r\n\r\n\r\n",
                    Some("s"),
                    Some("r2")
                ),
            ]
        );
    }

    #[test]
    fn a_stream_that_is_not_nats_text_is_passed_raw() {
        let got = units(&[b"PUB a notanumber\r\nxx", b"more"]);
        assert!(got.iter().all(|(_, _, _, raw)| *raw));
        assert_eq!(
            got.iter().map(|u| u.0.as_str()).collect::<String>(),
            "PUB a notanumber\r\nxxmore"
        );
    }
}
