//! The admin HTTP endpoint: `/healthz` (the process is alive), `/readyz`
//! (NATS connected and every plugin serving; 503 with the reasons otherwise),
//! `/metrics` (Prometheus text), `/plugins` (JSON status of each plugin) and
//! `POST /plugins/{name}/breaker/{open|close|auto}` (operator override).
//!
//! It is off unless `admin_addr` is set, and meant for a loopback or cluster
//! address: it has no authentication and exposes plugin names and errors.
//! The host decides what "ready" means (see `service`); this module only
//! serves the answer, so it stays independent of how plugins are loaded.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// Readiness and plugin status, computed by the host on each request.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Why the host is not ready; empty when ready.
    pub not_ready: Vec<String>,
    /// The `/plugins` document.
    pub plugins: serde_json::Value,
}

/// Produces the current [`Status`].
pub type StatusFn = Arc<dyn Fn() -> Status + Send + Sync>;

/// Applies an operator action to a plugin: `(plugin, breaker action)` ->
/// the new breaker state, or why not (unknown plugin or action).
pub type ControlFn = Arc<dyn Fn(&str, &str) -> Result<String, String> + Send + Sync>;

/// The admin endpoint could not listen.
#[derive(Debug, Error)]
#[error(
    "admin endpoint: cannot listen on {addr}: {source}; choose another admin_addr (SLUICE_ADMIN_ADDR) or `off`"
)]
pub struct AdminError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    status: StatusFn,
    control: ControlFn,
}

/// Bind `addr` now (so a taken port fails the start), then serve in the
/// background until `stop` fires. Returns the bound address (port 0 picks one).
pub async fn start(
    addr: SocketAddr,
    metrics: Metrics,
    status: StatusFn,
    control: ControlFn,
    stop: CancellationToken,
) -> Result<SocketAddr, AdminError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AdminError { addr, source })?;
    let app = Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/plugins", get(plugins))
        .route("/plugins/{name}/breaker/{action}", post(breaker))
        .with_state(AppState {
            metrics,
            status,
            control,
        });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!("admin endpoint stopped: {e}");
        }
    });
    tracing::info!("admin endpoint on http://{bound} (/healthz /readyz /metrics /plugins)");
    Ok(bound)
}

async fn index() -> &'static str {
    "sluice admin endpoint: /healthz /readyz /metrics /plugins\n"
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let status = (state.status)();
    if status.not_ready.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = format!("not ready:\n- {}\n", status.not_ready.join("\n- "));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

/// `POST /plugins/{name}/breaker/{open|close|auto}`: force a plugin's circuit
/// breaker open or closed, or hand it back to its policy.
async fn breaker(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    match (state.control)(&name, &action) {
        Ok(new_state) => (StatusCode::OK, format!("{name}: breaker {new_state}\n")).into_response(),
        Err(why) => (StatusCode::NOT_FOUND, format!("{why}\n")).into_response(),
    }
}

async fn plugins(State(state): State<AppState>) -> Response {
    let status = (state.status)();
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{:#}\n", status.plugins),
    )
        .into_response()
}
