//! The `logging` import: plugin log records go to the host's tracing log,
//! inside the event's span (plugin, version, subject, key, attempt), and (for `sluice
//! invoke`) are also kept so the author sees them.
//!
//! A per-event cap bounds how much one event can log; records past it are
//! counted and summarised once instead of flooding the log.

use crate::engine::bindings::v0_1::sluice::plugin::{logging, types};
use crate::host::{HostState, PluginTag};

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
    max_records: u32,
    emitted: u32,
    dropped: u32,
    keep: bool,
    kept: Vec<LogRecord>,
}

impl LogSink {
    /// A sink for one event; `keep` retains records for the caller.
    pub fn new(tag: PluginTag, max_records: u32, keep: bool) -> Self {
        LogSink {
            tag,
            max_records,
            emitted: 0,
            dropped: 0,
            keep,
            kept: Vec::new(),
        }
    }

    /// Records past the per-event cap that were dropped.
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// The retained records (empty unless `keep` was set).
    pub fn take_records(&mut self) -> Vec<LogRecord> {
        std::mem::take(&mut self.kept)
    }

    /// Log one record from the plugin, or count it as dropped past the cap.
    pub fn record(&mut self, level: &str, message: &str, fields: Vec<(String, String)>) {
        if self.emitted >= self.max_records {
            if self.dropped == 0 {
                tracing::warn!(
                    plugin = %self.tag.name, version = %self.tag.version,
                    "plugin reached its limit of {} log records for this event; dropping the rest",
                    self.max_records
                );
            }
            self.dropped += 1;
            return;
        }
        self.emitted += 1;
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
                message: message.to_string(),
                fields,
            });
        }
    }
}

fn level_name(level: types::Level) -> &'static str {
    match level {
        types::Level::Trace => "trace",
        types::Level::Debug => "debug",
        types::Level::Info => "info",
        types::Level::Warn => "warn",
        types::Level::Error => "error",
    }
}

impl logging::Host for HostState {
    fn log(&mut self, level: types::Level, message: String, fields: Vec<types::Field>) {
        let fields = fields.into_iter().map(|f| (f.key, f.value)).collect();
        self.logs.record(level_name(level), &message, fields);
    }
}
