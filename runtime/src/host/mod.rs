//! What a plugin instance sees of the host: the per-store state, the linker
//! with every import a plugin may use, and the implementations of the sluice
//! imports (logging, publish).
//!
//! WASI 0.2 is linked so that ordinary Rust, Python and JS components load,
//! but the context grants nothing: no preopened directories, no environment,
//! no arguments, no network. Clocks and random work; stdout and stderr are
//! captured and forwarded to the host log.

pub mod limiter;
pub mod logging;
pub mod publisher;
pub mod stdio;

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::engine::bindings::v0_1;
use crate::subject::PublishGrants;
pub use limiter::MemoryLimiter;
pub use logging::{LogRecord, LogSink};
pub use publisher::{OutboundMessage, Outbox, PublishLimits};
pub use stdio::CapturedOutput;

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
    /// Publishes buffered until the handler succeeds.
    pub outbox: Outbox,
    /// The plugin's stdout and stderr.
    pub output: CapturedOutput,
}

impl HostState {
    /// A deny-by-default state for one invocation of `tag`.
    pub fn new(
        tag: PluginTag,
        grants: Arc<PublishGrants>,
        publish_limits: PublishLimits,
        limiter: MemoryLimiter,
        logs: LogSink,
    ) -> Self {
        let output = CapturedOutput::new(tag.clone());
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
            outbox: Outbox::new(grants, publish_limits),
            output,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl v0_1::sluice::plugin::types::Host for HostState {}

/// The linker every plugin is instantiated with: WASI 0.2 plus the sluice imports.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    v0_1::Consumer::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
    Ok(linker)
}
