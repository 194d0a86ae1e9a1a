//! `hostile`: a plugin that misbehaves on purpose, so tests can check that the
//! sandbox contains it. The last token of the event's subject picks the
//! misbehaviour (`hostile.loop`, `x.y.grow`, ...):
//!
//! | mode | what it does | what the host must make of it |
//! |---|---|---|
//! | `loop` | spins forever | `deadline-exceeded` |
//! | `busy-wait` | polls the clock for 60 s (a "sleep" that burns CPU) | `deadline-exceeded` |
//! | `sleep` | sleeps 60 s in a WASI call (no CPU) | `deadline-exceeded` |
//! | `grow` | allocates 1 MiB blocks until the allocator is refused | `out-of-memory` |
//! | `recurse` | recurses without bound | `stack-overflow` |
//! | `panic` | panics | `trap` |
//! | `huge-error` | returns a permanent error whose message is 50 MB | `permanent`, message truncated |
//! | `malformed` | returns an error string that is not UTF-8 (breaks the ABI) | `trap` |
//! | `fs` | reads `/etc/passwd`, lists `/`, writes `/tmp` | refused: `permanent` |
//! | `env` | reads environment variables, args and the working directory | nothing there: `permanent` |
//! | `socket` | connects over TCP (to the address in the payload), binds UDP, resolves names | refused: `permanent` |
//! | `ungranted` | publishes to `secret.stolen`, which is not granted | refused: `permanent` |
//! | `reserved` | publishes to the DLQ, `$JS.API.>`, `$SYS`, `$KV`, `_INBOX` | refused: `permanent` |
//! | `publish-flood` | publishes 1000 messages, ignoring refusals, returns ok | `publish-limit` |
//! | `log-flood` | logs a million records (or the number in the payload), returns ok | ok or `deadline-exceeded`; the host drops and counts |
//! | `print-flood` | prints a million lines to stdout and stderr (or the number in the payload) | ok or `deadline-exceeded`; the host drops and counts |
//! | `forge-headers` | publishes the number in the payload (default 3) of messages to `forged.<i>`, each with the same `Nats-Msg-Id`, a `Nats-Rollup: all`, a `Nats-Expected-Last-Sequence: 1`, a `Sluice-Idempotency-Key` and a `Sluice-Plugin` of its choosing | the host drops those headers and sets its own: distinct host-derived ids, no pinned key downstream |
//! | `work` | spins for the number of milliseconds in the payload (default 10), returns ok | ok (a slow but honest plugin) |
//!
//! When an escape *works* (a file read, an env var, a socket, a refused
//! publish accepted), the plugin publishes what it found to `loot.<mode>`
//! and returns ok, so a test sees the breach instead of a polite error.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sluice_sdk::{Event, HandlerError, HandlerResult};

fn handle(event: Event) -> HandlerResult {
    let mode = event
        .subject
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string();
    match mode.as_str() {
        "loop" => spin_forever(),
        "busy-wait" => busy_wait(Duration::from_secs(60)),
        "sleep" => {
            std::thread::sleep(Duration::from_secs(60));
            Ok(())
        }
        "grow" => grow(),
        "recurse" => {
            let depth = recurse(black_box(u64::MAX));
            Err(HandlerError::permanent(format!(
                "recursion ended at {depth}"
            )))
        }
        "panic" => panic!("hostile plugin panics on purpose"),
        "huge-error" => Err(HandlerError::permanent("E".repeat(50 << 20))),
        "malformed" => {
            // SAFETY: deliberately not UTF-8; the host's ABI check must catch it.
            let invalid =
                unsafe { String::from_utf8_unchecked(vec![b'b', b'a', b'd', 0xff, 0xfe]) };
            Err(HandlerError::permanent(invalid))
        }
        "fs" => escape(&mode, probe_fs()),
        "env" => escape(&mode, probe_env()),
        "socket" => escape(&mode, probe_sockets(&event)),
        "ungranted" => publish_where_forbidden(&mode, &["secret.stolen"]),
        "reserved" => publish_where_forbidden(
            &mode,
            &[
                "sluice.dlq.hostile",
                "$JS.API.STREAM.DELETE.ORDERS",
                "$JS.API.STREAM.CREATE.STOLEN",
                "$SYS.REQ.SERVER.PING",
                "$KV.config.secret",
                "_INBOX.stolen",
            ],
        ),
        "publish-flood" => {
            for i in 0..1000 {
                let _ = sluice_sdk::publish(&format!("flood.{i}"), [0u8; 64]);
            }
            Ok(())
        }
        "log-flood" => {
            for i in 0..count(&event, 1_000_000) {
                sluice_sdk::info!("flood line {i}");
            }
            Ok(())
        }
        "print-flood" => {
            for i in 0..count(&event, 1_000_000) {
                println!("stdout flood line {i}");
                eprintln!("stderr flood line {i}");
            }
            Ok(())
        }
        "forge-headers" => {
            for i in 0..count(&event, 3) {
                sluice_sdk::publish_with_headers(
                    &format!("forged.{i}"),
                    i.to_string(),
                    &[
                        ("Nats-Msg-Id", "forged-id"),
                        ("Nats-Rollup", "all"),
                        ("Nats-Expected-Last-Sequence", "1"),
                        ("Sluice-Idempotency-Key", "forged-key"),
                        ("Sluice-Plugin", "someone-else"),
                        ("x-forged-by", "hostile"),
                    ],
                )?;
            }
            Ok(())
        }
        "work" => busy_wait(Duration::from_millis(count(&event, 10))),
        other => Err(HandlerError::permanent(format!("unknown mode `{other}`"))),
    }
}

/// The number in the payload, or `default`.
fn count(event: &Event, default: u64) -> u64 {
    event
        .text()
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(default)
}

fn spin_forever() -> HandlerResult {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn busy_wait(how_long: Duration) -> HandlerResult {
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        black_box(());
    }
    Ok(())
}

fn grow() -> HandlerResult {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every byte so the memory is really committed.
        hoard.push(vec![0xA5; 1 << 20]);
        black_box(&hoard);
    }
}

/// Not tail-recursive (the result is transformed after the call), so every
/// level keeps a wasm frame.
#[inline(never)]
fn recurse(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let below = recurse(black_box(n - 1));
    below.wrapping_mul(31).wrapping_add(n)
}

/// Ok with the loot published when an escape worked; a permanent error
/// listing the refusals otherwise.
fn escape(mode: &str, probe: Result<String, String>) -> HandlerResult {
    match probe {
        Ok(loot) => {
            sluice_sdk::publish(&format!("loot.{mode}"), loot)?;
            Ok(())
        }
        Err(refusals) => Err(HandlerError::permanent(format!(
            "{mode} denied: {refusals}"
        ))),
    }
}

fn probe_fs() -> Result<String, String> {
    let mut refusals = Vec::new();
    match std::fs::read_to_string("/etc/passwd") {
        Ok(text) => return Ok(format!("/etc/passwd: {text}")),
        Err(e) => refusals.push(format!("read /etc/passwd: {e}")),
    }
    match std::fs::read_dir("/") {
        Ok(entries) => return Ok(format!("ls /: {} entries", entries.count())),
        Err(e) => refusals.push(format!("list /: {e}")),
    }
    match std::fs::write("/tmp/sluice-hostile", b"was here") {
        Ok(()) => return Ok("wrote /tmp/sluice-hostile".into()),
        Err(e) => refusals.push(format!("write /tmp: {e}")),
    }
    Err(refusals.join("; "))
}

fn probe_env() -> Result<String, String> {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    if !vars.is_empty() {
        return Ok(format!("env: {vars:?}"));
    }
    let args: Vec<String> = std::env::args().collect();
    if !args.is_empty() {
        return Ok(format!("args: {args:?}"));
    }
    if let Ok(path) = std::env::var("PATH") {
        return Ok(format!("PATH={path}"));
    }
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|e| format!("none ({e})"));
    Err(format!("0 env vars, 0 args, cwd {cwd}"))
}

fn probe_sockets(event: &Event) -> Result<String, String> {
    use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
    let mut refusals = Vec::new();
    let target = event.text().unwrap_or_default().trim().to_string();
    if !target.is_empty() {
        match TcpStream::connect(&target) {
            Ok(_) => return Ok(format!("connected to {target}")),
            Err(e) => refusals.push(format!("tcp connect {target}: {e}")),
        }
    }
    match UdpSocket::bind("0.0.0.0:0") {
        Ok(_) => return Ok("bound a UDP socket".into()),
        Err(e) => refusals.push(format!("udp bind: {e}")),
    }
    match "localhost:4222".to_socket_addrs() {
        Ok(addrs) => {
            return Ok(format!(
                "resolved localhost: {:?}",
                addrs.collect::<Vec<_>>()
            ));
        }
        Err(e) => refusals.push(format!("resolve localhost: {e}")),
    }
    Err(refusals.join("; "))
}

fn publish_where_forbidden(mode: &str, subjects: &[&str]) -> HandlerResult {
    let mut refusals = Vec::new();
    for subject in subjects {
        match sluice_sdk::publish(subject, b"stolen") {
            // Accepted: the host would send it on success. Report the breach.
            Ok(()) => {
                let _ = sluice_sdk::publish(&format!("loot.{mode}"), subject.as_bytes());
                return Ok(());
            }
            Err(e) => refusals.push(sluice_sdk::describe_publish_error(&e)),
        }
    }
    Err(HandlerError::permanent(format!(
        "{mode} denied: {}",
        refusals.join("; ")
    )))
}

sluice_sdk::export_handler!(handle);
