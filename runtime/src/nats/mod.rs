//! The NATS side: connecting (and saying so while the server is unreachable),
//! authentication and TLS ([`auth`]), and converting messages to and from
//! plugin events.

pub mod auth;
pub mod convert;
pub mod election;
pub mod jetstream;
pub mod sync;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, ServerAddr};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Metrics;

pub use auth::{DEFAULT_CONNECT_TIMEOUT, NatsAuth, NatsSettings, NatsTls, redact_url};

/// Why the host could not connect.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// A URL is not a NATS server address.
    #[error("`{url}` is not a valid NATS server address: {reason}")]
    BadUrl {
        /// The URL as given (password masked).
        url: String,
        /// Parser message.
        reason: String,
    },
    /// A credentials or TLS file could not be used.
    #[error("NATS {what}: {reason}")]
    Setup {
        /// Which setting (`nats_creds_file`, ...).
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The server refused the credentials or the TLS handshake failed:
    /// retrying cannot help, the configuration must change.
    #[error("NATS at {servers} refused the connection: {reason}; {hint}")]
    Refused {
        /// The servers (passwords masked).
        servers: String,
        /// The client's error.
        reason: String,
        /// What to check.
        hint: String,
    },
    /// Shutdown was requested before a connection was made.
    #[error("shutdown requested before NATS at {0} became reachable")]
    Cancelled(String),
}

/// Connect to the first reachable server in `settings.urls`, retrying with
/// backoff (250 ms doubling to 10 s) and logging each failure until it
/// succeeds or `cancel` fires. Wrong credentials and TLS failures are not
/// retried: they are [`ConnectError::Refused`]. After connecting, the client
/// reconnects forever on its own; `metrics` (if any) follows the state.
pub async fn connect(
    settings: &NatsSettings,
    cancel: &CancellationToken,
    metrics: Option<&Metrics>,
) -> Result<Client, ConnectError> {
    let addrs = server_addrs(settings)?;
    let shown = settings.shown();
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1u32;
    loop {
        let monitor = metrics.cloned();
        let options = options(settings).await?.event_callback(move |event| {
            let monitor = monitor.clone();
            async move {
                if let Some(metrics) = &monitor {
                    match &event {
                        Event::Connected => metrics.nats_connected(true),
                        Event::Disconnected | Event::Closed => metrics.nats_connected(false),
                        _ => {}
                    }
                }
                log_event(event)
            }
        });
        let result = tokio::select! {
            _ = cancel.cancelled() => return Err(ConnectError::Cancelled(shown)),
            result = options.connect(addrs.clone()) => result,
        };
        match result {
            Ok(client) => {
                tracing::info!(servers = %shown, "connected to NATS");
                return Ok(client);
            }
            Err(error) if refused(&error) => {
                return Err(ConnectError::Refused {
                    servers: shown,
                    reason: error.to_string(),
                    hint: hint(settings, &error),
                });
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

/// Messages one subscription may hold in the NATS client before the host's
/// reader takes them (the client drops past this, as a "slow consumer").
pub const SUBSCRIPTION_CAPACITY: usize = 256 * 1024;

/// Messages the NATS client itself dropped because a subscription's buffer
/// (64 Ki messages) was full: counted from async-nats slow-consumer events.
static CLIENT_DROPS: AtomicU64 = AtomicU64::new(0);
static LAST_DROP_REPORT_MS: AtomicU64 = AtomicU64::new(0);

/// Messages dropped by the NATS client for slow subscriptions, since start.
pub fn client_drops() -> u64 {
    CLIENT_DROPS.load(Ordering::Relaxed)
}

/// Connect once (for CLI commands), within the connect timeout.
pub async fn connect_once(settings: &NatsSettings) -> Result<Client, ConnectError> {
    let addrs = server_addrs(settings)?;
    let shown = settings.shown();
    let options = options(settings).await?;
    match options.connect(addrs).await {
        Ok(client) => Ok(client),
        Err(error) => Err(ConnectError::Refused {
            servers: shown,
            reason: error.to_string(),
            hint: if refused(&error) {
                hint(settings, &error)
            } else {
                "is nats-server running? check --nats-url / SLUICE_NATS_URL".into()
            },
        }),
    }
}

fn server_addrs(settings: &NatsSettings) -> Result<Vec<ServerAddr>, ConnectError> {
    settings
        .urls
        .iter()
        .map(|url| {
            url.parse::<ServerAddr>().map_err(|e| ConnectError::BadUrl {
                url: redact_url(url),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Connect options from the settings: auth, TLS, timeouts, unlimited reconnects.
async fn options(settings: &NatsSettings) -> Result<ConnectOptions, ConnectError> {
    // Each subscription's client-side buffer: the host's own reader drains it
    // into the plugin's bounded `core_buffer` (where drops are counted
    // exactly); this one only absorbs scheduling hiccups during bursts.
    let mut options = ConnectOptions::new()
        .name("sluice")
        .connection_timeout(settings.connect_timeout)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .max_reconnects(None);
    options = match &settings.auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.expose().to_string())
        }
        NatsAuth::Token(token) => options.token(token.expose().to_string()),
        NatsAuth::NKey { seed, .. } => options.nkey(seed.expose().to_string()),
        NatsAuth::Creds(file) => {
            options
                .credentials_file(file)
                .await
                .map_err(|e| ConnectError::Setup {
                    what: "nats_creds_file",
                    reason: format!("{}: {e}", file.display()),
                })?
        }
    };
    if let Some(ca) = &settings.tls.ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &settings.tls.client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if settings.tls.enabled() {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// Errors that retrying cannot fix: credentials refused, TLS handshake failed.
fn refused(error: &async_nats::ConnectError) -> bool {
    matches!(
        error.kind(),
        ConnectErrorKind::AuthorizationViolation
            | ConnectErrorKind::Authentication
            | ConnectErrorKind::Tls
    ) || is_tls_failure(error)
}

/// async-nats reports a failed TLS handshake (unknown issuer, bad client
/// certificate) as an IO error; find the rustls error inside it.
fn is_tls_failure(error: &async_nats::ConnectError) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && inner.is::<rustls::Error>()
        {
            return true;
        }
        next = e.source();
    }
    false
}

fn hint(settings: &NatsSettings, error: &async_nats::ConnectError) -> String {
    if error.kind() == ConnectErrorKind::Tls || is_tls_failure(error) {
        return "check nats_tls_ca (the CA that signed the server certificate), nats_tls_cert and nats_tls_key (SLUICE_NATS_TLS_*), and that the URL's host matches the certificate".into();
    }
    match &settings.auth {
        NatsAuth::None => "the server requires authentication: set nats_user/nats_password, nats_token, nats_nkey_file or nats_creds_file (or SLUICE_NATS_*)".into(),
        NatsAuth::UserPassword { user, .. } => format!(
            "check nats_user (`{user}`) and nats_password (SLUICE_NATS_USER, SLUICE_NATS_PASSWORD)"
        ),
        NatsAuth::Token(_) => "check nats_token (SLUICE_NATS_TOKEN)".into(),
        NatsAuth::NKey { file, .. } => format!(
            "check that the server's authorization lists the public key of the seed in {} (nats_nkey_file)",
            file.display()
        ),
        NatsAuth::Creds(file) => format!(
            "check the credentials in {} (nats_creds_file): the user must exist in the server's account and not be expired or revoked",
            file.display()
        ),
    }
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
