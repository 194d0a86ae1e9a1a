//! What a plugin instance sees of the host: the per-store state, the linker
//! with every import a plugin may use, and the implementations of the sluice
//! imports (logging, publish, config); [`crate::contract`] adapts them to
//! each contract version.
//!
//! WASI 0.2 is linked so that ordinary Rust, Python and JS components load,
//! but the context grants nothing: no preopened directories, no environment,
//! no arguments, no sockets. Clocks and random work; stdout and stderr are
//! captured and forwarded to the host log. `wasi:http/outgoing-handler` is
//! linked too (contract 0.2.0); [`http::HttpBudget`] lets a request out only
//! to an origin the plugin is granted.

pub mod config;
pub mod http;
pub mod limiter;
pub mod logging;
pub mod publisher;
pub mod requester;
pub mod state;
pub mod stdio;
pub mod throttle;

use std::borrow::Cow;
use std::sync::Arc;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::contract::{self, Level, PluginHost, PublishError};
use crate::subject::PublishGrants;
pub use config::PluginConfig;
pub use limiter::MemoryLimiter;
pub use logging::{LogRecord, LogSink};
pub use publisher::{OutboundMessage, Outbox, PublishLimits};
pub use stdio::CapturedOutput;
pub use throttle::{LogBudget, LogGate};

/// Identifies the plugin version an instance belongs to, for log tagging.
#[derive(Debug, Clone)]
pub struct PluginTag {
    /// Plugin name (the file stem).
    pub name: Arc<str>,
    /// Short content hash of the component.
    pub version: Arc<str>,
}

/// Everything one invocation needs from the host, owned by its store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory and table growth limits of this instance.
    pub limiter: MemoryLimiter,
    /// Log records of this invocation.
    pub logs: LogSink,
    /// Admits log records and output lines (per-event cap, plugin rate limit).
    pub log_gate: Arc<LogGate>,
    /// Publishes buffered until the handler succeeds.
    pub outbox: Outbox,
    /// The plugin's stdout and stderr.
    pub output: CapturedOutput,
    /// The plugin's configuration and secrets (`config.get`).
    pub config: Arc<PluginConfig>,
    /// State writes buffered until the handler succeeds.
    pub state: state::StateTxn,
    /// The attempt's requests (`requester`).
    pub requests: requester::RequestBudget,
    http_ctx: WasiHttpCtx,
    /// The attempt's outbound HTTP (`wasi:http`).
    pub http: http::HttpBudget,
    /// The invocation's place in the CPU governor, read by the store's epoch
    /// callback; `None` between invocations (the callback then interrupts).
    pub cpu: Option<crate::engine::governor::CpuTicket>,
}

impl HostState {
    /// A deny-by-default state for one invocation of `tag`; `keep_logs`
    /// retains log records and output lines for the caller.
    pub fn new(
        tag: PluginTag,
        grants: Arc<PublishGrants>,
        publish_limits: PublishLimits,
        limiter: MemoryLimiter,
        log_gate: Arc<LogGate>,
        keep_logs: bool,
    ) -> Self {
        let logs = LogSink::new(tag.clone(), log_gate.clone(), keep_logs);
        let mut output = CapturedOutput::new(tag, log_gate.clone());
        if keep_logs {
            output.keep_lines();
        }
        let mut builder = WasiCtx::builder();
        builder.stdout(output.stdout()).stderr(output.stderr());
        // Nothing else is granted: no dirs, env, args, or network.
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        HostState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limiter,
            logs,
            log_gate,
            outbox: Outbox::new(grants, publish_limits),
            output,
            config: Arc::default(),
            state: state::StateTxn::default(),
            requests: requester::RequestBudget::default(),
            http_ctx: WasiHttpCtx::new(),
            http: http::HttpBudget::default(),
            cpu: None,
        }
    }
}

impl HostState {
    /// Prepare a reused instance's state for its next event: nothing of the
    /// previous event's outbox, logs, output or limit refusals carries over.
    pub fn begin_event(&mut self) {
        self.outbox.reset();
        self.logs.reset();
        self.output.reset();
        self.log_gate.reset();
        self.limiter.reset();
    }
}

/// `s` cut to at most `max` bytes (at a character boundary), with a marker
/// saying how many bytes were cut. Whatever a plugin hands the host is bounded
/// by this before it is logged or kept.
pub fn truncated(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{} … ({} more bytes)", &s[..cut], s.len() - cut))
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

/// The host side of every contract version's imports (the version modules
/// in [`crate::contract`] convert their generated types and call these).
impl PluginHost for HostState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        self.logs.record(level.as_str(), &message, fields);
    }

    fn publish(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), PublishError> {
        self.publish_message(subject, payload, headers)
    }

    fn config_get(&mut self, key: &str) -> Option<String> {
        self.config.get(key).map(str::to_string)
    }

    fn state(&mut self) -> &mut state::StateTxn {
        &mut self.state
    }

    fn requests(&mut self) -> &mut requester::RequestBudget {
        &mut self.requests
    }
}

/// The linker every plugin is instantiated with: WASI 0.2, `wasi:http`
/// (only a component importing it is linked to it) and the sluice imports of
/// every contract version.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    contract::add_to_linker(&mut linker)?;
    Ok(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries_and_says_how_much() {
        assert_eq!(truncated("short", 10), "short");
        let cut = truncated("ééé", 3);
        assert_eq!(cut, "é … (4 more bytes)");
        let huge = "E".repeat(50 << 20);
        assert!(truncated(&huge, 4096).len() < 4200);
    }
}
