//! Statistics: latency percentiles from an HDR histogram, throughput, ratios,
//! and the issue's pass/fail bars. Pure code, unit-tested, so the numbers in
//! the report are computed one way everywhere.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// A latency recorder: microsecond resolution, 1 µs .. 60 s, 3 significant digits.
pub struct LatencyRecorder {
    hist: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        LatencyRecorder {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        }
    }

    /// Record one latency in nanoseconds (clamped into the histogram's range).
    pub fn record_ns(&mut self, ns: u64) {
        let us = (ns / 1_000).clamp(1, 60_000_000);
        self.hist.saturating_record(us);
    }

    /// Samples so far.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The percentiles, or `None` when empty.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        let q = |q: f64| self.hist.value_at_quantile(q) as f64;
        Some(LatencySummary {
            count: self.hist.len(),
            p50_us: q(0.50),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: self.hist.max() as f64,
            mean_us: self.hist.mean(),
        })
    }
}

/// Events per second, or `None` for an empty or zero-length run.
pub fn rate(events: u64, seconds: f64) -> Option<f64> {
    (events > 0 && seconds > 0.0).then(|| events as f64 / seconds)
}

/// `value / baseline`, when both exist and the baseline is positive.
pub fn ratio(value: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    match (value, baseline) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
        _ => None,
    }
}

/// The median of `samples` (`None` when empty).
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

/// Which way a bar is passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The measured value must be at least the target.
    AtLeast,
    /// The measured value must be below the target.
    Below,
    /// The measured value must be at most the target.
    AtMost,
}

/// One of the issue's acceptance bars, with what was measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bar {
    /// What is compared, e.g. "JetStream no-op / native pull+ack".
    pub name: String,
    /// Where the measured value comes from (scenario and row).
    pub source: String,
    /// The target value.
    pub target: f64,
    /// Pass direction.
    pub direction: Direction,
    /// Unit of target and measured value ("x", "ms").
    pub unit: String,
    /// The measured value (`None`: scenario not run or failed).
    pub measured: Option<f64>,
    /// Pass (`None`: not measured).
    pub pass: Option<bool>,
}

impl Bar {
    /// A bar, judged against `measured`.
    pub fn judge(
        name: &str,
        source: &str,
        direction: Direction,
        target: f64,
        unit: &str,
        measured: Option<f64>,
    ) -> Bar {
        let pass = measured.map(|m| match direction {
            Direction::AtLeast => m >= target,
            Direction::Below => m < target,
            Direction::AtMost => m <= target,
        });
        Bar {
            name: name.into(),
            source: source.into(),
            target,
            direction,
            unit: unit.into(),
            measured,
            pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut rec = LatencyRecorder::new();
        for us in 1..=1000u64 {
            rec.record_ns(us * 1_000);
        }
        let s = rec.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.p999_us - 999.0).abs() <= 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() <= 1.0, "{s:?}");
        assert!((s.mean_us - 500.5).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_lost() {
        let mut rec = LatencyRecorder::new();
        rec.record_ns(0);
        rec.record_ns(u64::MAX);
        assert_eq!(rec.len(), 2);
        assert!(LatencyRecorder::new().summary().is_none());
    }

    #[test]
    fn rates_and_ratios() {
        assert_eq!(rate(1000, 0.5), Some(2000.0));
        assert_eq!(rate(0, 1.0), None);
        assert_eq!(rate(5, 0.0), None);
        assert_eq!(ratio(Some(6.0), Some(10.0)), Some(0.6));
        assert_eq!(ratio(Some(6.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn bars_pass_and_fail() {
        let b = Bar::judge("r", "s", Direction::AtLeast, 0.6, "x", Some(0.61));
        assert_eq!(b.pass, Some(true));
        let b = Bar::judge("r", "s", Direction::AtLeast, 0.6, "x", Some(0.59));
        assert_eq!(b.pass, Some(false));
        let b = Bar::judge("l", "s", Direction::Below, 1.0, "ms", Some(1.0));
        assert_eq!(b.pass, Some(false));
        let b = Bar::judge("f", "s", Direction::AtMost, 1.5, "x", Some(1.5));
        assert_eq!(b.pass, Some(true));
        let b = Bar::judge("l", "s", Direction::Below, 1.0, "ms", None);
        assert_eq!(b.pass, None);
    }
}
