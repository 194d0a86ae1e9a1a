//! The plain (not JSON, not coloured) log line: tracing-subscriber's compact
//! format, with the event being handled ([`super::event_scope`]) written
//! where its span's name and fields would be. The text is the same as with
//! a real `event` span (a test renders both and compares), so operators and
//! their log queries see no difference; the fields are only formatted when
//! a line is written.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Compact, Format, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use super::event_scope;

/// Compact lines that name the event being handled.
#[derive(Debug)]
pub struct EventLines<T = SystemTime> {
    timer: T,
    /// Lines outside any event, and `log` crate records, exactly as before.
    outside: Format<Compact, T>,
}

impl EventLines {
    /// With the default timestamps.
    pub fn new() -> Self {
        Self::with_timer(SystemTime)
    }
}

impl Default for EventLines {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: FormatTime + Clone> EventLines<T> {
    /// With timestamps written by `timer`.
    pub fn with_timer(timer: T) -> Self {
        EventLines {
            outside: tracing_subscriber::fmt::format()
                .compact()
                .with_ansi(false)
                .with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for EventLines<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // A `log` record names its real target in fields the default
        // format knows how to read.
        let handled = (meta.target() != "log")
            .then(event_scope::current)
            .flatten();
        let Some(handled) = handled else {
            return self.outside.format_event(ctx, writer, event);
        };
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_char(' ')?;
        write!(writer, "{} ", level_text(meta.level()))?;
        // The event is the outermost scope; any span opened while handling
        // it follows, as a span inside the event's span would.
        let inner = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        writer.write_str("event:")?;
        for span in inner.iter().flat_map(|span| span.scope().from_root()) {
            write!(writer, "{}:", span.metadata().name())?;
        }
        write!(writer, " {}: ", meta.target())?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char(' ')?;
        handled.write_plain(&mut writer)?;
        for span in inner.iter().flat_map(|span| span.scope().from_root()) {
            let extensions = span.extensions();
            if let Some(fields) = extensions.get::<FormattedFields<N>>()
                && !fields.is_empty()
            {
                write!(writer, " {}", fields.fields)?;
            }
        }
        writeln!(writer)
    }
}

/// The level as the compact format writes it without colours.
fn level_text(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::LazyTraceId;
    use crate::telemetry::event_scope::{EventFields, in_event};
    use crate::telemetry::fields::PlainFields;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    fn fixed_time(w: &mut Writer<'_>) -> fmt::Result {
        w.write_str("2026-12-05T12:00:00.000000Z")
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn fields(position: Option<(String, u64)>) -> Arc<EventFields> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        Arc::new(EventFields {
            plugin: "noop".into(),
            version: "0123456789ab".into(),
            subject: "orders.created".into(),
            key: "ORDERS@1:7".into(),
            position,
            trace: LazyTraceId::of(Some(&headers)),
        })
    }

    /// What is logged while one event is handled, and around it.
    async fn log_some_lines() {
        tracing::warn!(
            error.class = "retryable",
            "attempt {} failed: {}",
            1,
            "boom"
        );
        tracing::info!(target: "sluice::plugin", "noop: hello \"you\"");
        tracing::info!(count = 2);
        let inner = tracing::info_span!("inner", step = 3);
        async { tracing::debug!("inside a span of its own") }
            .instrument(inner)
            .await;
        tokio::task::yield_now().await;
        tracing::error!("after a yield");
    }

    use tracing::Instrument;

    /// Render the lines of [`log_some_lines`] handled as `position`'s event,
    /// with a real span or with the deferred fields.
    fn rendered(position: Option<(String, u64)>, real_span: bool) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(false)
            .with_timer(fixed_time as fn(&mut Writer<'_>) -> fmt::Result)
            .fmt_fields(PlainFields)
            .with_writer(move || Sink(sink.clone()));
        let handled = fields(position);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        if real_span {
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!("before the event");
                runtime.block_on(log_some_lines().instrument(handled.span()));
                tracing::info!("after the event");
            });
        } else {
            let layer = layer.event_format(EventLines::with_timer(
                fixed_time as fn(&mut Writer<'_>) -> fmt::Result,
            ));
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!("before the event");
                runtime.block_on(in_event(handled, log_some_lines()));
                tracing::info!("after the event");
            });
        }
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_are_the_same_as_with_a_real_span() {
        for position in [None, Some(("ORDERS".to_string(), 7))] {
            let deferred = rendered(position.clone(), false);
            let real = rendered(position.clone(), true);
            assert_eq!(deferred, real);
            // And they say what they should (not two empty strings).
            assert_eq!(deferred.lines().count(), 7, "{deferred}");
            assert!(
                deferred.contains(
                    " WARN event: sluice::telemetry::event_lines::tests: attempt 1 failed: boom error.class=\"retryable\" otel.kind=\"consumer\" plugin=noop version=0123456789ab subject=orders.created key=ORDERS@1:7"
                ),
                "{deferred}"
            );
            assert!(
                deferred.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
                "{deferred}"
            );
            assert!(
                deferred.contains("event:inner: ") && deferred.contains(" step=3"),
                "{deferred}"
            );
            assert_eq!(
                deferred.contains("stream=ORDERS seq=7"),
                position.is_some(),
                "{deferred}"
            );
            let first = deferred.lines().next().unwrap();
            assert!(
                first.ends_with(" INFO sluice::telemetry::event_lines::tests: before the event"),
                "a line outside the event names none: {first}"
            );
        }
    }

    #[test]
    fn the_current_event_is_only_set_while_its_future_is_polled() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(event_scope::current().is_none());
        let seen = runtime.block_on(in_event(fields(None), async {
            tokio::task::yield_now().await;
            event_scope::current().map(|f| f.key.clone())
        }));
        assert_eq!(seen.as_deref(), Some("ORDERS@1:7"));
        assert!(event_scope::current().is_none());
        // An event polled inside another's poll is current only meanwhile.
        let (inner, outer) = runtime.block_on(in_event(fields(None), async {
            let inner = in_event(
                Arc::new(EventFields {
                    key: "inner".into(),
                    ..Arc::into_inner(fields(None)).unwrap()
                }),
                async { event_scope::current().map(|f| f.key.clone()) },
            )
            .await;
            (inner, event_scope::current().map(|f| f.key.clone()))
        }));
        assert_eq!(inner.as_deref(), Some("inner"));
        assert_eq!(outer.as_deref(), Some("ORDERS@1:7"));
        assert!(event_scope::current().is_none());
        // A panic inside the poll does not leave it set.
        let panicked = std::panic::catch_unwind(|| {
            runtime.block_on(in_event(fields(None), async { panic!("boom") }))
        });
        assert!(panicked.is_err());
        assert!(event_scope::current().is_none());
    }
}
