//! Running one event through one plugin version: a fresh store and instance,
//! a CPU/wall-time deadline, memory limits, and a classified outcome.
//!
//! A fresh instance per event means no state leaks between events and a trap
//! can never poison the next event. The pooling allocator and `InstancePre`
//! keep that cheap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use crate::engine::WasmEngine;
use crate::engine::bindings::v0_1::sluice::plugin::types;
use crate::engine::component::CompiledPlugin;
use crate::host::{
    HostState, LogRecord, LogSink, MemoryLimiter, OutboundMessage, PluginTag, PublishLimits,
};
use crate::subject::PublishGrants;

/// Per-invocation limits.
#[derive(Debug, Clone, Copy)]
pub struct InvokeLimits {
    /// Wall-clock time limit for instantiate + handle.
    pub timeout: Duration,
    /// Linear memory cap in bytes.
    pub max_memory_bytes: usize,
    /// Table size cap in elements.
    pub max_table_elements: usize,
    /// Publish caps.
    pub publish: PublishLimits,
    /// Log records kept per event; the rest are dropped and counted.
    pub max_log_records: u32,
}

impl Default for InvokeLimits {
    fn default() -> Self {
        InvokeLimits {
            timeout: Duration::from_secs(5),
            max_memory_bytes: 64 << 20,
            max_table_elements: 20_000,
            publish: PublishLimits::default(),
            max_log_records: 1_000,
        }
    }
}

/// What the host should make of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// The handler returned a retryable error.
    Retryable,
    /// The handler returned a permanent error: dead-letter without retry.
    Permanent,
    /// The time limit was reached.
    DeadlineExceeded,
    /// The plugin hit its memory limit (and then trapped).
    OutOfMemory,
    /// The plugin overflowed its stack.
    StackOverflow,
    /// Any other trap (a Rust panic is an `unreachable` trap).
    Trap,
    /// The instance could not be created.
    Instantiate,
    /// Not run: the plugin's circuit breaker is open (core NATS events).
    CircuitOpen,
}

impl FailureClass {
    /// Stable name used in logs, metrics and dead-letter records.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Retryable => "retryable",
            FailureClass::Permanent => "permanent",
            FailureClass::DeadlineExceeded => "deadline-exceeded",
            FailureClass::OutOfMemory => "out-of-memory",
            FailureClass::StackOverflow => "stack-overflow",
            FailureClass::Trap => "trap",
            FailureClass::Instantiate => "instantiate",
            FailureClass::CircuitOpen => "circuit-open",
        }
    }

    /// Whether a retry could succeed.
    pub fn is_retryable(self) -> bool {
        !matches!(self, FailureClass::Permanent | FailureClass::CircuitOpen)
    }
}

/// A failed invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Classification.
    pub class: FailureClass,
    /// Human-readable reason.
    pub message: String,
    /// Delay suggested by the plugin.
    pub retry_after: Option<Duration>,
}

/// Result of one invocation.
#[derive(Debug)]
pub struct InvocationReport {
    /// `Ok` when the handler succeeded.
    pub outcome: Result<(), Failure>,
    /// Buffered publishes; empty unless the handler succeeded.
    pub published: Vec<OutboundMessage>,
    /// Log records (only when requested).
    pub logs: Vec<LogRecord>,
    /// stdout/stderr lines (only when requested).
    pub output: Vec<String>,
    /// Publishes the host refused during the call.
    pub refused_publishes: u32,
    /// Time spent instantiating.
    pub instantiate_time: Duration,
    /// Total time.
    pub elapsed: Duration,
}

/// One event to run.
pub struct InvocationRequest<'a> {
    /// The event as the plugin will see it.
    pub event: &'a types::Event,
    /// Plugin name and version, for tagging.
    pub tag: PluginTag,
    /// Publish grants.
    pub grants: Arc<PublishGrants>,
    /// Limits.
    pub limits: InvokeLimits,
    /// Keep log records and output lines in the report (for `sluice invoke`).
    pub keep_logs: bool,
}

/// Run `request` on a fresh instance of `plugin`.
pub async fn invoke(
    engine: &WasmEngine,
    plugin: &CompiledPlugin,
    request: InvocationRequest<'_>,
) -> InvocationReport {
    let started = Instant::now();
    let deadline = started + request.limits.timeout;
    let logs = LogSink::new(
        request.tag.clone(),
        request.limits.max_log_records,
        request.keep_logs,
    );
    let limiter = MemoryLimiter::new(
        request.limits.max_memory_bytes,
        request.limits.max_table_elements,
    );
    let mut state = HostState::new(
        request.tag,
        request.grants,
        request.limits.publish,
        limiter,
        logs,
    );
    if request.keep_logs {
        state.output.keep_lines();
    }
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });

    let mut instantiate_time = Duration::ZERO;
    let call = async {
        let consumer = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| (FailureClass::Instantiate, e))?;
        instantiate_time = started.elapsed();
        consumer
            .sluice_plugin_handler()
            .call_handle(&mut store, request.event)
            .await
            .map_err(|e| (FailureClass::Trap, e))
    };
    // Epoch interruption stops wasm code; this backstop also stops a plugin
    // that waits in a host call (for example a long WASI sleep).
    let backstop = request.limits.timeout + Duration::from_millis(200);
    let result = match tokio::time::timeout(backstop, call).await {
        Ok(result) => result,
        Err(_) => Err((
            FailureClass::DeadlineExceeded,
            wasmtime::Error::msg("the handler did not return in time (waiting in a host call)"),
        )),
    };

    let state = store.data_mut();
    let output = state.output.finish();
    let logs = state.logs.take_records();
    let refused_publishes = state.outbox.refused();
    let outcome = match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(types::HandlerError::Retryable(e))) => Err(Failure {
            class: FailureClass::Retryable,
            message: e.message,
            retry_after: e.retry_after_ms.map(Duration::from_millis),
        }),
        Ok(Err(types::HandlerError::Permanent(message))) => Err(Failure {
            class: FailureClass::Permanent,
            message,
            retry_after: None,
        }),
        Err((class, error)) => Err(classify(
            class,
            &error,
            &state.limiter,
            request.limits.timeout,
        )),
    };
    let published = if outcome.is_ok() {
        state.outbox.take()
    } else {
        Vec::new()
    };
    InvocationReport {
        outcome,
        published,
        logs,
        output,
        refused_publishes,
        instantiate_time,
        elapsed: started.elapsed(),
    }
}

fn classify(
    class: FailureClass,
    error: &wasmtime::Error,
    limiter: &MemoryLimiter,
    timeout: Duration,
) -> Failure {
    let class = match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FailureClass::DeadlineExceeded,
        Some(Trap::StackOverflow) => FailureClass::StackOverflow,
        Some(_) if limiter.refused_memory() => FailureClass::OutOfMemory,
        _ if class == FailureClass::Trap && limiter.refused_memory() => FailureClass::OutOfMemory,
        _ => class,
    };
    let detail = format!("{error:#}");
    let message = match class {
        FailureClass::DeadlineExceeded => format!("time limit of {timeout:?} exceeded: {detail}"),
        FailureClass::OutOfMemory => format!(
            "memory limit of {} MiB reached: {detail}",
            limiter.max_memory_bytes() >> 20
        ),
        _ => detail,
    };
    Failure {
        class,
        message: truncate(message, 4096),
        retry_after: None,
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" …");
    }
    s
}

/// Instantiate `plugin` once without calling it, to catch failures that only
/// show at instantiation before the plugin is put in service.
pub async fn smoke(
    engine: &WasmEngine,
    plugin: &CompiledPlugin,
) -> Result<(), crate::engine::component::ComponentError> {
    let tag = PluginTag {
        name: "smoke-test".into(),
        version: plugin.info.version.as_str().into(),
    };
    let limits = InvokeLimits::default();
    let logs = LogSink::new(tag.clone(), 0, false);
    let limiter = MemoryLimiter::new(
        engine.settings().max_memory_bytes,
        engine.settings().max_table_elements,
    );
    let state = HostState::new(tag, Arc::default(), limits.publish, limiter, logs);
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|s| &mut s.limiter);
    let deadline = Instant::now() + limits.timeout;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    plugin
        .pre
        .instantiate_async(&mut store)
        .await
        .map(drop)
        .map_err(|e| crate::engine::component::ComponentError::Instantiate(format!("{e:#}")))
}
