//! How log fields are written in the human-readable format: exactly as
//! tracing-subscriber's default (`name=value`, separated by spaces), for
//! less work.
//!
//! Every event the host handles opens a span (plugin, version, subject,
//! key, trace id) whose fields the log formatter writes out when the span
//! is created, whether or not anything is ever logged inside it. With the
//! default field formatter that was a sixth of the host's CPU time on a
//! no-op plugin: each `name=value` goes through a three-argument `write!`
//! with two styled (and, without a terminal, empty) pieces around the name.
//! Here a plain `name=value` field is written directly; everything with
//! rules of its own (`message`, `r#` names, `log.` metadata, errors and
//! their sources, quoted strings) and all output to a terminal (styled) is
//! left to the default formatter, so the text is the same.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};

/// The default field format, written with less work when not styled.
#[derive(Debug, Default)]
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        if writer.has_ansi_escapes() {
            return DefaultFields::new().format_fields(writer, fields);
        }
        // Written into a reused buffer, then copied in one piece: the
        // span's own string starts empty and would otherwise grow (and be
        // copied) five or six times on the way to a typical line.
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                scratch.clear();
                let result = record_plain(Writer::new(&mut *scratch), fields);
                let written = writer.write_str(&scratch);
                scratch.shrink_to(SCRATCH_KEPT);
                result.and(written)
            }
            // A value whose formatting logs: write directly.
            Err(_) => record_plain(writer, fields),
        })
    }
}

/// Bytes of scratch space a thread keeps between lines.
const SCRATCH_KEPT: usize = 4096;

thread_local! {
    static SCRATCH: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
}

fn record_plain<R: RecordFields>(writer: Writer<'_>, fields: R) -> fmt::Result {
    let mut visitor = PlainVisitor {
        writer,
        empty: true,
        result: Ok(()),
    };
    fields.record(&mut visitor);
    visitor.result
}

struct PlainVisitor<'w> {
    writer: Writer<'w>,
    /// Nothing written yet (no space before the next field).
    empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// A field with rules of its own, written by the default visitor. It
    /// skips `log.` metadata without padding and writes something for every
    /// other field, so only those leave the line empty.
    fn by_default(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut default = DefaultVisitor::new(self.writer.by_ref(), self.empty);
        record(&mut default);
        self.result = default.finish();
        self.empty = self.empty && field.name().starts_with("log.");
    }

    fn is_plain(field: &Field) -> bool {
        let name = field.name();
        name != "message" && !name.starts_with("r#") && !name.starts_with("log.")
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if Self::is_plain(field) {
            // Quoted, as the default writes a string.
            return self.record_debug(field, &value);
        }
        self.by_default(field, |v| v.record_str(field, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        self.by_default(field, |v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        if !Self::is_plain(field) {
            return self.by_default(field, |v| v.record_debug(field, value));
        }
        let pad = !std::mem::replace(&mut self.empty, false);
        self.result = (|| {
            if pad {
                self.writer.write_char(' ')?;
            }
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
            write!(self.writer, "{value:?}")
        })();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::FormatFields;
    use tracing_subscriber::layer::SubscriberExt;

    /// Render the fields of one span and one event inside it with `format`.
    fn rendered<F>(format: F) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .compact()
            .without_time()
            .with_ansi(false)
            .fmt_fields(format)
            .with_writer(move || Sink(sink.clone()));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let key = String::from("orders:42");
            let span = tracing::info_span!(
                "event", plugin = %"noop", attempt = 3u32, key = %key, quoted = "a \"b\"",
                r#type = "x", ok = true
            );
            let _entered = span.enter();
            let error = std::io::Error::other(Wrapped(std::io::Error::other("inner")));
            tracing::warn!(
                error = &error as &(dyn std::error::Error + 'static),
                count = 2,
                "attempt {} failed: {}",
                1,
                "boom"
            );
            tracing::info!(r#"message with "quotes""#);
        });
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "outer")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_the_same_as_with_the_default_field_format() {
        let plain = rendered(PlainFields);
        let default = rendered(DefaultFields::new());
        assert_eq!(plain, default);
        // And they say what they should (so the comparison is not of two empty strings).
        assert!(
            plain.contains(
                "plugin=noop attempt=3 key=orders:42 quoted=\"a \\\"b\\\"\" type=\"x\" ok=true"
            ),
            "{plain}"
        );
        assert!(plain.contains("attempt 1 failed: boom"), "{plain}");
        assert!(
            plain.contains("error=outer error.sources=[inner] count=2"),
            "{plain}"
        );
    }
}
