//! The benchmark report: one JSON document (machine, commit, settings, every
//! scenario's rows, the bars) and the same as a markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{Bar, Direction, LatencySummary};

/// The machine a run happened on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    /// Online CPUs.
    pub nproc: usize,
    /// CPU model name from /proc/cpuinfo.
    pub cpu_model: String,
    /// Total memory in MiB.
    pub memory_mb: u64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Describe this machine (Linux /proc; fields stay empty elsewhere).
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mb = kb_field(&meminfo, "MemTotal:").unwrap_or(0) / 1024;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_mb,
            kernel,
        }
    }
}

/// The value in kB of a `Name:   123 kB` line of a /proc file.
pub fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// One measured variant of a scenario (the baseline or a sluice configuration).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    /// What ran, e.g. `baseline: async-nats subscribe` or `sluice noop (fresh instance)`.
    pub variant: String,
    /// Throughput.
    pub events_per_s: Option<f64>,
    /// Throughput relative to the scenario's baseline row.
    pub ratio_vs_baseline: Option<f64>,
    /// Publish-to-handled latency at the fixed offered rate.
    pub latency: Option<LatencySummary>,
    /// A duration in milliseconds (reload, cold start, instantiate+call).
    pub millis: Option<f64>,
    /// Host resident set size after the run, MiB.
    pub rss_mb: Option<f64>,
    /// Host peak resident set size, MiB.
    pub peak_rss_mb: Option<f64>,
    /// Anything else measured (dropped events, dedup hits, per-sample times...).
    pub extra: BTreeMap<String, f64>,
}

impl Row {
    /// An empty row named `variant`.
    pub fn new(variant: impl Into<String>) -> Row {
        Row {
            variant: variant.into(),
            ..Row::default()
        }
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioResult {
    /// Scenario name, e.g. `js-noop`.
    pub name: String,
    /// What it measures.
    pub description: String,
    /// Measured variants; the first row named `baseline...` is the baseline.
    pub rows: Vec<Row>,
    /// Notes (parameters, caveats).
    pub notes: Vec<String>,
    /// Set when the scenario could not complete.
    pub error: Option<String>,
}

impl ScenarioResult {
    /// Fill every row's `ratio_vs_baseline` from the baseline row's
    /// throughput (a scenario without a baseline row keeps its own ratios).
    pub fn fill_ratios(&mut self) {
        let Some(base) = self
            .rows
            .iter()
            .find(|r| r.variant.starts_with("baseline"))
            .and_then(|r| r.events_per_s)
        else {
            return;
        };
        let base = Some(base);
        for row in &mut self.rows {
            if !row.variant.starts_with("baseline") {
                row.ratio_vs_baseline = crate::stats::ratio(row.events_per_s, base);
            }
        }
    }

    /// The row whose variant starts with `prefix`.
    pub fn row(&self, prefix: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.variant.starts_with(prefix))
    }
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// `git describe`-like commit of the tree measured.
    pub git_commit: String,
    /// Seconds since the Unix epoch at the start.
    pub started_unix: u64,
    /// The run's parameters.
    pub settings: BTreeMap<String, String>,
    /// Scenario results, in run order.
    pub scenarios: Vec<ScenarioResult>,
    /// The bars.
    pub bars: Vec<Bar>,
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.decimals$}"))
}

fn count(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{:.0}", v))
}

impl Report {
    /// The report as markdown: machine, a table of every row, the bars.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), {} MiB RAM, Linux {}; commit {}\n",
            m.nproc, m.cpu_model, m.memory_mb, m.kernel, self.git_commit
        );
        if !self.settings.is_empty() {
            let settings: Vec<String> = self
                .settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(out, "Settings: {}\n", settings.join(", "));
        }
        out.push_str("| scenario | variant | events/s | × baseline | p50 µs | p99 µs | p99.9 µs | ms | RSS MiB (peak) |\n");
        out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for s in &self.scenarios {
            if let Some(e) = &s.error {
                let _ = writeln!(
                    out,
                    "| {} | **error**: {} | | | | | | | |",
                    s.name,
                    one_line(e)
                );
            }
            for r in &s.rows {
                let lat = r.latency;
                let rss = match (r.rss_mb, r.peak_rss_mb) {
                    (Some(a), Some(b)) => format!("{a:.0} ({b:.0})"),
                    (Some(a), None) => format!("{a:.0}"),
                    _ => "–".into(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    s.name,
                    r.variant,
                    count(r.events_per_s),
                    num(r.ratio_vs_baseline, 2),
                    count(lat.map(|l| l.p50_us)),
                    count(lat.map(|l| l.p99_us)),
                    count(lat.map(|l| l.p999_us)),
                    num(
                        r.millis,
                        if r.millis.is_some_and(|m| m < 1.0) {
                            4
                        } else {
                            1
                        }
                    ),
                    rss
                );
            }
        }
        if !self.bars.is_empty() {
            out.push_str("\n| bar | target | measured | result | from |\n|---|---|---|---|---|\n");
            for b in &self.bars {
                let op = match b.direction {
                    Direction::AtLeast => "≥",
                    Direction::Below => "<",
                    Direction::AtMost => "≤",
                };
                let result = match b.pass {
                    Some(true) => "PASS",
                    Some(false) => "FAIL",
                    None => "not measured",
                };
                let _ = writeln!(
                    out,
                    "| {} | {op} {} {} | {} {} | {result} | {} |",
                    b.name,
                    b.target,
                    b.unit,
                    num(b.measured, 2),
                    b.unit,
                    b.source
                );
            }
        }
        let notes: Vec<String> = self
            .scenarios
            .iter()
            .flat_map(|s| s.notes.iter().map(move |n| format!("- {}: {n}", s.name)))
            .collect();
        if !notes.is_empty() {
            out.push_str("\nNotes:\n");
            for n in notes {
                out.push_str(&n);
                out.push('\n');
            }
        }
        out
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '|'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut s = ScenarioResult {
            name: "core-noop".into(),
            ..Default::default()
        };
        let mut base = Row::new("baseline: async-nats subscribe");
        base.events_per_s = Some(100_000.0);
        let mut sluice = Row::new("sluice noop");
        sluice.events_per_s = Some(60_000.0);
        sluice.rss_mb = Some(40.2);
        sluice.peak_rss_mb = Some(50.9);
        s.rows = vec![base, sluice];
        s.fill_ratios();
        Report {
            git_commit: "abc123".into(),
            scenarios: vec![
                s,
                ScenarioResult {
                    name: "broken".into(),
                    error: Some("boom\nsecond line".into()),
                    ..Default::default()
                },
            ],
            bars: vec![Bar::judge(
                "core no-op / native",
                "core-noop",
                Direction::AtLeast,
                0.5,
                "x",
                Some(0.6),
            )],
            ..Default::default()
        }
    }

    #[test]
    fn ratios_are_relative_to_the_baseline_row() {
        let r = sample();
        let rows = &r.scenarios[0].rows;
        assert_eq!(rows[0].ratio_vs_baseline, None);
        assert!((rows[1].ratio_vs_baseline.unwrap() - 0.6).abs() < 1e-9);
        assert!(r.scenarios[0].row("sluice").is_some());
    }

    #[test]
    fn markdown_has_rows_errors_and_bars() {
        let md = sample().markdown();
        assert!(
            md.contains("| core-noop | sluice noop | 60000 | 0.60 |"),
            "{md}"
        );
        assert!(md.contains("40 (51)"), "{md}");
        assert!(md.contains("**error**: boom second line"), "{md}");
        assert!(
            md.contains("| core no-op / native | ≥ 0.5 x | 0.60 x | PASS |"),
            "{md}"
        );
    }

    #[test]
    fn json_round_trips_through_serde() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["scenarios"][0]["rows"][1]["events_per_s"], 60000.0);
        assert_eq!(json["bars"][0]["pass"], true);
    }

    #[test]
    fn proc_fields_parse() {
        let status = "Name:\tsluice\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(kb_field(status, "VmRSS:"), Some(40000));
        assert_eq!(kb_field(status, "VmHWM:"), Some(51234));
        assert_eq!(kb_field(status, "VmSwap:"), None);
    }
}
