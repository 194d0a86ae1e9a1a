//! Plugin stdout and stderr, forwarded line by line to the host log.
//!
//! Each line is tagged with the plugin, its version and the stream. Output is
//! capped per invocation in bytes, and every line also passes the
//! invocation's [`LogGate`] (per-event line cap, per-plugin rate limit), so a
//! plugin printing in a loop cannot fill the disk or stall the host: past the
//! limits, output is counted and dropped, and the guest keeps running (writes
//! never fail, so printing never traps).
//!
//! The last few stderr lines are kept whatever the limits say: when the
//! plugin then traps, they usually hold its panic message, which goes into
//! the failure message.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::host::PluginTag;
use crate::host::throttle::LogGate;

/// Most bytes of stdout plus stderr logged per invocation.
pub const MAX_OUTPUT_BYTES_PER_EVENT: usize = 64 * 1024;
/// Longest line logged; longer lines are cut.
const MAX_LINE: usize = 4096;
/// Recent stderr lines kept for the failure message.
const STDERR_TAIL_LINES: usize = 4;
/// Longest stderr line kept for the failure message.
const STDERR_TAIL_LINE: usize = 512;

#[derive(Debug, Default)]
struct Shared {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    logged: usize,
    dropped: usize,
    keep: bool,
    lines: Vec<String>,
    stderr_tail: VecDeque<String>,
}

/// The stdout/stderr capture of one invocation.
#[derive(Debug, Clone)]
pub struct CapturedOutput {
    tag: PluginTag,
    gate: Arc<LogGate>,
    shared: Arc<Mutex<Shared>>,
}

/// Which stream a writer feeds.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// A writer for one stream; what WASI hands to the guest.
#[derive(Debug, Clone)]
pub struct StreamWriter {
    output: CapturedOutput,
    stream: Stream,
}

impl CapturedOutput {
    /// A capture tagging lines with `tag`, logging those `gate` admits.
    pub fn new(tag: PluginTag, gate: Arc<LogGate>) -> Self {
        CapturedOutput {
            tag,
            gate,
            shared: Arc::default(),
        }
    }

    /// The last few non-empty stderr lines, oldest first, joined with ` | `
    /// (usually a panic message); `None` when there were none.
    pub fn stderr_tail(&self) -> Option<String> {
        let shared = self.shared.lock().expect("stdio lock");
        (!shared.stderr_tail.is_empty()).then(|| {
            shared
                .stderr_tail
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(" | ")
        })
    }

    /// Start a new event on the same capture (a reused instance): the byte
    /// cap, the stderr tail and any partial line start afresh.
    pub fn reset(&self) {
        let mut shared = self.shared.lock().expect("stdio lock");
        let keep = shared.keep;
        *shared = Shared {
            keep,
            ..Shared::default()
        };
    }

    /// Also retain the lines (for `sluice invoke`).
    pub fn keep_lines(&mut self) {
        self.shared.lock().expect("stdio lock").keep = true;
    }

    /// The stdout writer.
    pub fn stdout(&self) -> StreamWriter {
        StreamWriter {
            output: self.clone(),
            stream: Stream::Stdout,
        }
    }

    /// The stderr writer.
    pub fn stderr(&self) -> StreamWriter {
        StreamWriter {
            output: self.clone(),
            stream: Stream::Stderr,
        }
    }

    /// Log any unterminated last lines and report dropped bytes; returns the
    /// retained lines (empty unless [`keep_lines`](Self::keep_lines)).
    pub fn finish(&self) -> Vec<String> {
        let mut shared = self.shared.lock().expect("stdio lock");
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(buffer(&mut shared, stream));
            if !rest.is_empty() {
                self.emit(&mut shared, stream, &rest);
            }
        }
        if shared.dropped > 0 {
            tracing::warn!(
                plugin = %self.tag.name, version = %self.tag.version,
                "plugin wrote more than {MAX_OUTPUT_BYTES_PER_EVENT} bytes to stdout/stderr for one event; {} bytes dropped",
                shared.dropped
            );
            shared.dropped = 0;
        }
        std::mem::take(&mut shared.lines)
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut shared = self.shared.lock().expect("stdio lock");
        let room = MAX_OUTPUT_BYTES_PER_EVENT.saturating_sub(shared.logged);
        let (take, drop) = bytes.split_at(bytes.len().min(room));
        shared.logged += take.len();
        shared.dropped += drop.len();
        // Lines cut by the byte cap count as dropped log lines too.
        let lines = drop.iter().filter(|b| **b == b'\n').count();
        self.gate
            .count_dropped(u32::try_from(lines).unwrap_or(u32::MAX));
        buffer(&mut shared, stream).extend_from_slice(take);
        while let Some(pos) = buffer(&mut shared, stream).iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer(&mut shared, stream).drain(..=pos).collect();
            self.emit(&mut shared, stream, &line[..line.len() - 1]);
        }
        if buffer(&mut shared, stream).len() > MAX_LINE {
            let line = std::mem::take(buffer(&mut shared, stream));
            self.emit(&mut shared, stream, &line);
        }
    }

    fn emit(&self, shared: &mut Shared, stream: Stream, line: &[u8]) {
        let line = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]);
        let line = line.trim_end_matches('\r');
        if matches!(stream, Stream::Stderr)
            && !line.trim().is_empty()
            && !line.starts_with("note: run with `RUST_BACKTRACE")
        {
            if shared.stderr_tail.len() == STDERR_TAIL_LINES {
                shared.stderr_tail.pop_front();
            }
            shared
                .stderr_tail
                .push_back(crate::host::truncated(line, STDERR_TAIL_LINE).into_owned());
        }
        if !self.gate.admit_line("output") {
            return;
        }
        match stream {
            Stream::Stdout => tracing::info!(
                target: "sluice::plugin", "{} stdout: {line}", self.tag.name
            ),
            Stream::Stderr => tracing::warn!(
                target: "sluice::plugin", "{} stderr: {line}", self.tag.name
            ),
        }
        if shared.keep {
            let name = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            shared.lines.push(format!("{name}: {line}"));
        }
    }
}

fn buffer(shared: &mut Shared, stream: Stream) -> &mut Vec<u8> {
    match stream {
        Stream::Stdout => &mut shared.stdout,
        Stream::Stderr => &mut shared.stderr,
    }
}

impl IsTerminal for StreamWriter {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StreamWriter {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for StreamWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE * 4)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StreamWriter {
    async fn ready(&mut self) {}
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.output.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::host::throttle::LogBudget;

    fn capture(max_lines: u32) -> CapturedOutput {
        let tag = PluginTag {
            name: "p".into(),
            version: "v".into(),
        };
        let gate = LogGate::new(tag.clone(), Arc::new(LogBudget::unlimited()), max_lines);
        CapturedOutput::new(tag, Arc::new(gate))
    }

    #[test]
    fn lines_are_split_and_output_is_capped() {
        let mut out = capture(100);
        out.keep_lines();
        out.stdout().output.write(Stream::Stdout, b"one\ntw");
        out.stdout().output.write(Stream::Stdout, b"o\nthree");
        out.stderr().output.write(Stream::Stderr, b"oops\n");
        let lines = out.finish();
        assert_eq!(
            lines,
            vec![
                "stdout: one",
                "stdout: two",
                "stderr: oops",
                "stdout: three"
            ]
        );

        let out = capture(100);
        out.stdout()
            .output
            .write(Stream::Stdout, &vec![b'x'; MAX_OUTPUT_BYTES_PER_EVENT + 10]);
        assert_eq!(out.shared.lock().unwrap().dropped, 10);
        out.stdout().output.write(Stream::Stdout, b"a\nb\nc\n");
        assert_eq!(out.gate.dropped(), 3, "lines past the byte cap are counted");
    }

    #[test]
    fn lines_past_the_gate_are_dropped_but_the_stderr_tail_is_kept() {
        let mut out = capture(2);
        out.keep_lines();
        for i in 0..5 {
            out.stderr()
                .output
                .write(Stream::Stderr, format!("line {i}\n").as_bytes());
        }
        out.stderr().output.write(
            Stream::Stderr,
            b"note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
        );
        assert_eq!(out.finish(), vec!["stderr: line 0", "stderr: line 1"]);
        assert_eq!(out.gate.dropped(), 4);
        assert_eq!(
            out.stderr_tail().as_deref(),
            Some("line 1 | line 2 | line 3 | line 4")
        );
    }
}
