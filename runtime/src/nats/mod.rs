//! The NATS side: connecting (and saying so while the server is unreachable),
//! and converting messages to and from plugin events.

pub mod convert;
pub mod jetstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why the host could not connect.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// A URL is not a NATS server address.
    #[error("`{url}` is not a valid NATS server address: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Parser message.
        reason: String,
    },
    /// Shutdown was requested before a connection was made.
    #[error("shutdown requested before NATS at {0} became reachable")]
    Cancelled(String),
}

/// Connect to the first reachable server in `urls`, retrying with backoff
/// (250 ms doubling to 10 s) and logging each failure until it succeeds or
/// `cancel` fires. After connecting, the client reconnects forever on its own.
pub async fn connect(urls: &[String], cancel: &CancellationToken) -> Result<Client, ConnectError> {
    let addrs: Vec<ServerAddr> = urls
        .iter()
        .map(|url| {
            url.parse::<ServerAddr>().map_err(|e| ConnectError::BadUrl {
                url: url.clone(),
                reason: e.to_string(),
            })
        })
        .collect::<Result<_, _>>()?;
    let shown = urls.join(", ");
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1u32;
    loop {
        let options = ConnectOptions::new()
            .name("sluice")
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(|event| async move { log_event(event) });
        let result = tokio::select! {
            _ = cancel.cancelled() => return Err(ConnectError::Cancelled(shown)),
            result = options.connect(addrs.clone()) => result,
        };
        match result {
            Ok(client) => {
                tracing::info!(servers = %shown, "connected to NATS");
                return Ok(client);
            }
            Err(error) => {
                tracing::warn!(
                    servers = %shown, attempt,
                    "cannot reach NATS: {error}; retrying in {delay:?} (is nats-server running? check --nats-url / SLUICE_NATS_URL)"
                );
                tokio::select! {
                    _ = cancel.cancelled() => return Err(ConnectError::Cancelled(shown)),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
        }
    }
}

/// Messages the NATS client itself dropped because a subscription's buffer
/// (64 Ki messages) was full: counted from async-nats slow-consumer events.
static CLIENT_DROPS: AtomicU64 = AtomicU64::new(0);
static LAST_DROP_REPORT_MS: AtomicU64 = AtomicU64::new(0);

/// Messages dropped by the NATS client for slow subscriptions, since start.
pub fn client_drops() -> u64 {
    CLIENT_DROPS.load(Ordering::Relaxed)
}

fn log_event(event: Event) {
    match event {
        Event::SlowConsumer(sid) => {
            let total = CLIENT_DROPS.fetch_add(1, Ordering::Relaxed) + 1;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let last = LAST_DROP_REPORT_MS.load(Ordering::Relaxed);
            if now_ms.saturating_sub(last) >= 1000
                && LAST_DROP_REPORT_MS
                    .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::error!(
                    subscription = sid,
                    dropped_total = total,
                    "the NATS client dropped messages for a slow subscription: the host cannot keep up; raise max_concurrency or add hosts to the queue group"
                );
            }
        }
        Event::Connected => tracing::info!("NATS connection (re)established"),
        Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
        Event::Closed => tracing::info!("NATS connection closed"),
        other => tracing::warn!("NATS: {other}"),
    }
}
