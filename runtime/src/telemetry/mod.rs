//! What an operator sees of a running host: logs ([`init`]: human-readable by
//! default, JSON lines with `--log-format json`, filtered with RUST_LOG syntax
//! from `--log`, `SLUICE_LOG` or `RUST_LOG`), Prometheus [`metrics`], and the
//! [`admin`] HTTP endpoint (`/healthz`, `/readyz`, `/metrics`, `/plugins`).

pub mod admin;
pub mod event_lines;
pub mod event_scope;
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
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines_name_events = lines_name_events(format, ansi, &filter.to_string());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty if lines_name_events => {
            let installed = builder
                .fmt_fields(fields::PlainFields)
                .event_format(event_lines::EventLines::new())
                .try_init();
            if installed.is_ok() {
                event_scope::use_real_spans(false);
            }
        }
        LogFormat::Pretty => {
            let _ = builder.compact().fmt_fields(fields::PlainFields).try_init();
        }
        LogFormat::Json => {
            let _ = builder.json().try_init();
        }
    }
}

/// Whether the line formatter names the event being handled
/// ([`event_lines`]) instead of a real span ([`event_scope`]): only plain
/// lines can, and only when the filter does not select by span fields
/// (span directives such as `[event{plugin=x}]=debug`).
fn lines_name_events(format: LogFormat, ansi: bool, filter: &str) -> bool {
    format == LogFormat::Pretty && !ansi && !filter.contains('[')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_get_a_real_span_where_the_output_or_the_filter_needs_one() {
        assert!(lines_name_events(
            LogFormat::Pretty,
            false,
            "warn,sluice=info"
        ));
        assert!(!lines_name_events(LogFormat::Pretty, true, "info"));
        assert!(!lines_name_events(LogFormat::Json, false, "info"));
        let with_span_directive = EnvFilter::new("info,[event{plugin=orders}]=debug");
        assert!(!lines_name_events(
            LogFormat::Pretty,
            false,
            &with_span_directive.to_string()
        ));
    }
}
