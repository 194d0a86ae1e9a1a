//! The event being handled (plugin, version, subject, key, stream position,
//! trace id), named on every line logged while it is handled.
//!
//! Why not always a tracing span: the log formatter writes a span's fields
//! out when the span is created, whether or not anything inside it ever
//! logs, and the span is created, entered at every poll and closed for every
//! event. On a no-op plugin that was a fifth to a third of the core path's
//! throughput (docs/benchmarks.md, fourth round). Here the fields are kept
//! as they are, made the thread's current event while the event's future is
//! polled, and written only by a line logged meanwhile
//! ([`super::event_lines`]), in the same place and words as the span's.
//!
//! A real span is still used where the output is not those plain lines
//! (JSON, a terminal's colours) or the log filter selects by span fields
//! (`[event{plugin=...}]`): those read the span itself. [`super::init`]
//! decides which, once.

use std::cell::Cell;
use std::fmt::{self, Write};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::future::Either;
use tracing::Instrument;

use crate::dispatch::LazyTraceId;

/// What names one event in the logs.
#[derive(Debug)]
pub struct EventFields {
    /// The plugin handling it.
    pub plugin: Arc<str>,
    /// The plugin's version (short content hash).
    pub version: Arc<str>,
    /// The subject it arrived on.
    pub subject: async_nats::Subject,
    /// Its idempotency key.
    pub key: String,
    /// Stream and sequence of a JetStream event.
    pub position: Option<(String, u64)>,
    /// The trace it belongs to (made when first asked for).
    pub trace: LazyTraceId,
}

/// Real spans until [`super::init`] installs the formatter that writes the
/// deferred fields (a host used as a library, unit tests).
static REAL_SPANS: AtomicBool = AtomicBool::new(true);

/// Whether events get a real span (see the module docs).
pub(crate) fn use_real_spans(yes: bool) {
    REAL_SPANS.store(yes, Ordering::Relaxed);
}

thread_local! {
    static CURRENT: Cell<Option<Arc<EventFields>>> = const { Cell::new(None) };
}

/// The event whose future this thread is polling, if any.
pub fn current() -> Option<Arc<EventFields>> {
    CURRENT
        .try_with(|current| {
            let fields = current.take();
            current.set(fields.clone());
            fields
        })
        .ok()
        .flatten()
}

/// Run `work` as the handling of the event named by `fields`: every line
/// it logs names the event. (Not an `async fn`: `work` is large, and is
/// moved once, into the returned future, instead of twice.)
pub fn within<F: Future>(
    fields: &Arc<EventFields>,
    work: F,
) -> impl Future<Output = F::Output> + use<F> {
    if REAL_SPANS.load(Ordering::Relaxed) {
        Either::Left(work.instrument(fields.span()))
    } else {
        Either::Right(in_event(fields.clone(), work))
    }
}

/// `work`, with `fields` the thread's current event while it is polled.
pub(crate) fn in_event<F: Future>(fields: Arc<EventFields>, work: F) -> InEvent<F> {
    InEvent { fields, work }
}

pin_project_lite::pin_project! {
    /// A future polled as the handling of one event.
    pub struct InEvent<F> {
        fields: Arc<EventFields>,
        #[pin]
        work: F,
    }
}

impl<F: Future> Future for InEvent<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _restore = Restore(CURRENT.with(|c| c.replace(Some(this.fields.clone()))));
        this.work.poll(cx)
    }
}

/// Puts back the event that was current before a poll (also when it panics).
struct Restore(Option<Arc<EventFields>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        let _ = CURRENT.try_with(|c| c.set(previous));
    }
}

impl EventFields {
    /// The span these fields would be as a tracing span.
    pub(crate) fn span(&self) -> tracing::Span {
        match &self.position {
            None => tracing::info_span!(
                "event", otel.kind = "consumer", plugin = %self.plugin, version = %self.version,
                subject = %self.subject, key = %self.key, trace_id = %self.trace
            ),
            Some((stream, seq)) => tracing::info_span!(
                "event", otel.kind = "consumer", plugin = %self.plugin, version = %self.version,
                subject = %self.subject, key = %self.key, stream = %stream, seq = seq,
                trace_id = %self.trace
            ),
        }
    }

    /// The fields as the plain formatter writes the span's.
    pub(crate) fn write_plain(&self, out: &mut impl Write) -> fmt::Result {
        write!(
            out,
            "otel.kind=\"consumer\" plugin={} version={} subject={} key={}",
            self.plugin, self.version, self.subject, self.key
        )?;
        if let Some((stream, seq)) = &self.position {
            write!(out, " stream={stream} seq={seq}")?;
        }
        write!(out, " trace_id={}", self.trace)
    }
}
