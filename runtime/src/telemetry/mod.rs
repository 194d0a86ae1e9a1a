//! What an operator sees of a running host: logs ([`init`]: human-readable by
//! default, JSON lines with `--log-format json`, filtered with RUST_LOG syntax
//! from `--log`, `SLUICE_LOG` or `RUST_LOG`), Prometheus [`metrics`], and the
//! [`admin`] HTTP endpoint (`/healthz`, `/readyz`, `/metrics`, `/plugins`).

pub mod admin;
pub mod fields;
pub mod health;
pub mod metrics;
pub mod trace;

pub use metrics::Metrics;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the global subscriber. Later calls are ignored (tests call it often).
pub fn init(format: LogFormat, filter: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| filter.to_string());
    // async-nats logs every connect at info; the host reports connection state itself.
    let filter = format!("async_nats=warn,{filter}");
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("sluice: invalid log filter `{filter}` ({e}); using `info`");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.compact().fmt_fields(fields::PlainFields).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
