//! The `logging` import: plugin log records go to the host's tracing log,
//! inside the event's span (plugin, version, subject, key, attempt), and (for `sluice
//! invoke`) are also kept so the author sees them.
//!
//! Every record passes the invocation's [`LogGate`] (a per-event line cap and
//! the plugin's rate limit); records past either are counted and dropped
//! instead of flooding the log. Messages and fields are cut to a bounded size,
//! so one giant record cannot either.

use std::sync::Arc;

use crate::host::throttle::LogGate;
use crate::host::{PluginTag, truncated};

/// Longest message logged per record, in bytes; the rest is cut.
pub const MAX_LOG_MESSAGE: usize = 4096;
/// Most structured fields logged per record.
const MAX_FIELDS: usize = 32;
/// Longest field key or value logged, in bytes.
const MAX_FIELD: usize = 512;

/// One record a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Severity.
    pub level: String,
    /// The message.
    pub message: String,
    /// Structured fields as (key, value).
    pub fields: Vec<(String, String)>,
}

/// Where an invocation's log records go.
#[derive(Debug)]
pub struct LogSink {
    tag: PluginTag,
    gate: Arc<LogGate>,
    keep: bool,
    kept: Vec<LogRecord>,
}

impl LogSink {
    /// A sink for one event, admitting records through `gate`; `keep`
    /// retains records for the caller.
    pub fn new(tag: PluginTag, gate: Arc<LogGate>, keep: bool) -> Self {
        LogSink {
            tag,
            gate,
            keep,
            kept: Vec::new(),
        }
    }

    /// Forget the previous event's records (a reused instance).
    pub fn reset(&mut self) {
        self.kept.clear();
    }

    /// The retained records (empty unless `keep` was set).
    pub fn take_records(&mut self) -> Vec<LogRecord> {
        std::mem::take(&mut self.kept)
    }

    /// Log one record from the plugin, or count it as dropped past the cap.
    pub fn record(&mut self, level: &str, message: &str, fields: Vec<(String, String)>) {
        if !self.gate.admit_line("log records") {
            return;
        }
        let message = truncated(message, MAX_LOG_MESSAGE);
        let fields: Vec<(String, String)> = fields
            .iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| {
                (
                    truncated(k, MAX_FIELD).into_owned(),
                    truncated(v, MAX_FIELD).into_owned(),
                )
            })
            .collect();
        let rendered: String = fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(
                    target: "sluice::plugin", $lvl,
                    "{}: {message}{rendered}", self.tag.name
                )
            };
        }
        match level {
            "trace" => emit!(tracing::Level::TRACE),
            "debug" => emit!(tracing::Level::DEBUG),
            "info" => emit!(tracing::Level::INFO),
            "warn" => emit!(tracing::Level::WARN),
            _ => emit!(tracing::Level::ERROR),
        }
        if self.keep {
            self.kept.push(LogRecord {
                level: level.to_string(),
                message: message.into_owned(),
                fields,
            });
        }
    }
}
