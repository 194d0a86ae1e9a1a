//! The issue's acceptance bars, judged from the scenario results.

use crate::report::ScenarioResult;
use crate::stats::{Bar, Direction};

fn find<'a>(results: &'a [ScenarioResult], name: &str) -> Option<&'a ScenarioResult> {
    results.iter().find(|s| s.name == name)
}

/// The best throughput ratio among a scenario's sluice rows whose label
/// contains `filter`: (ratio, row label).
fn best_ratio(s: Option<&ScenarioResult>, filter: &str) -> (Option<f64>, String) {
    let best = s
        .into_iter()
        .flat_map(|s| &s.rows)
        .filter(|r| r.variant.contains(filter))
        .filter_map(|r| r.ratio_vs_baseline.map(|x| (x, r)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((x, r)) => (Some(x), r.variant.clone()),
        None => (None, String::new()),
    }
}

/// The lowest p99 (ms) among a scenario's sluice latency rows at `rate`.
fn best_p99_ms(s: Option<&ScenarioResult>, rate: u64) -> (Option<f64>, String) {
    let at = format!("@ {rate}/s");
    let best = s
        .into_iter()
        .flat_map(|s| &s.rows)
        .filter(|r| r.variant.starts_with("sluice") && r.variant.ends_with(&at))
        .filter_map(|r| r.latency.map(|l| (l.p99_us / 1000.0, r)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((x, r)) => (Some(x), r.variant.clone()),
        None => (None, String::new()),
    }
}

fn src(scenario: &str, row: &str) -> String {
    if row.is_empty() {
        scenario.to_string()
    } else {
        format!("{scenario}: {row}")
    }
}

/// Judge every bar that the results allow; latency bars use the rows
/// measured at the fixed offered `rate`.
pub fn judge(results: &[ScenarioResult], rate: u64) -> Vec<Bar> {
    let mut bars = Vec::new();
    for (scenario, what, bar) in [
        ("js-noop", "JetStream no-op / native pull+ack", 0.6),
        ("core-noop", "core no-op / native subscriber", 0.5),
    ] {
        let s = find(results, scenario);
        for (filter, mode) in [
            ("sluice", "fastest isolation mode"),
            ("fresh instance", "fresh instance per event"),
        ] {
            let (v, row) = best_ratio(s, filter);
            bars.push(Bar::judge(
                &format!("{what} ({mode})"),
                &src(scenario, &row),
                Direction::AtLeast,
                bar,
                "x",
                v,
            ));
        }
    }
    let floor = find(results, "floor").and_then(|s| {
        s.rows
            .iter()
            .find_map(|r| r.extra.get("ratio_vs_bare").copied())
    });
    bars.push(Bar::judge(
        "fresh instance per event / bare wasmtime instantiate+call",
        "floor",
        Direction::AtMost,
        1.5,
        "x",
        floor,
    ));
    let (v, row) = best_p99_ms(find(results, "core-realistic"), rate);
    bars.push(Bar::judge(
        "p99 publish->handled, core, at the fixed rate",
        &src("core-realistic", &row),
        Direction::Below,
        1.0,
        "ms",
        v,
    ));
    let (v, row) = best_p99_ms(find(results, "js-realistic"), rate);
    bars.push(Bar::judge(
        "p99 publish->handled, JetStream, at the fixed rate",
        &src("js-realistic", &row),
        Direction::Below,
        5.0,
        "ms",
        v,
    ));
    let worst = find(results, "neighbours").and_then(|s| {
        s.rows
            .iter()
            .filter_map(|r| r.ratio_vs_baseline.map(|x| (x, r.variant.clone())))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    });
    bars.push(Bar::judge(
        "healthy neighbour's throughput beside the worst hostile plugin / alone (issue 5)",
        &src(
            "neighbours",
            worst.as_ref().map_or("", |(_, row)| row.as_str()),
        ),
        Direction::AtLeast,
        0.8,
        "x",
        worst.map(|(x, _)| x),
    ));
    let reload = find(results, "reload-2mb")
        .and_then(|s| s.rows.first())
        .and_then(|r| r.millis);
    bars.push(Bar::judge(
        "hot reload of a 2+ MB plugin, file in place -> first event (median)",
        "reload-2mb",
        Direction::Below,
        500.0,
        "ms",
        reload,
    ));
    bars.extend(issue16(results, rate));
    bars
}

/// A row's ratio to the baseline, by exact label: (ratio, label).
fn row_ratio(s: Option<&ScenarioResult>, label: &str) -> (Option<f64>, String) {
    let r = s.and_then(|s| s.rows.iter().find(|r| r.variant == label));
    (r.and_then(|r| r.ratio_vs_baseline), label.to_string())
}

/// Issue 16's bars: the default path against native and FastStream, the
/// fast modes against native, and core with reuse.
fn issue16(results: &[ScenarioResult], rate: u64) -> Vec<Bar> {
    let mut bars = Vec::new();
    let js = find(results, "default-path");
    for (label, what, bar) in [
        (
            "sluice default (fresh instance, KV dedup)",
            "default config (fresh instance, KV dedup), JetStream no-op / native",
            0.12,
        ),
        (
            "sluice isolation = \"reuse\", KV dedup",
            "isolation = \"reuse\" + KV dedup, JetStream no-op / native",
            0.4,
        ),
        (
            "sluice isolation = \"reuse\", dedup off",
            "isolation = \"reuse\", dedup off, JetStream no-op / native",
            0.6,
        ),
    ] {
        let (v, row) = row_ratio(js, label);
        bars.push(Bar::judge(
            what,
            &src("default-path", &row),
            Direction::AtLeast,
            bar,
            "x",
            v,
        ));
    }
    let eps = |label: &str| {
        js.and_then(|s| s.rows.iter().find(|r| r.variant == label))
            .and_then(|r| r.events_per_s)
    };
    bars.push(Bar::judge(
        "default config, JetStream no-op / FastStream (Python) in the same run",
        "default-path",
        Direction::AtLeast,
        2.5,
        "x",
        crate::stats::ratio(
            eps("sluice default (fresh instance, KV dedup)"),
            eps(crate::scenarios::FASTSTREAM_ROW),
        ),
    ));
    let core = find(results, "core-default");
    let (v, row) = best_ratio(core, "sluice noop");
    bars.push(Bar::judge(
        "core no-op, isolation = \"reuse\" / native subscriber",
        &src("core-default", &row),
        Direction::AtLeast,
        0.3,
        "x",
        v,
    ));
    let (v, row) = best_p99_ms(core, rate);
    bars.push(Bar::judge(
        "p99 publish->handled, core no-op (mirror) with reuse, at the fixed rate",
        &src("core-default", &row),
        Direction::Below,
        1.0,
        "ms",
        v,
    ));
    bars
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Row;

    #[test]
    fn bars_pick_the_best_variant_and_skip_missing_scenarios() {
        let mut js = ScenarioResult {
            name: "js-noop".into(),
            ..Default::default()
        };
        for (label, eps) in [
            ("baseline", 100.0),
            ("sluice noop (fresh instance per event)", 40.0),
            ("sluice noop (fast isolation: x)", 70.0),
        ] {
            let mut r = Row::new(label);
            r.events_per_s = Some(eps);
            js.rows.push(r);
        }
        js.fill_ratios();
        let bars = judge(&[js], 10_000);
        assert_eq!(bars[0].pass, Some(true));
        assert!(bars[0].source.contains("fast isolation"));
        assert_eq!(bars[1].pass, Some(false));
        assert!(bars[2..].iter().all(|b| b.pass.is_none()));
    }

    #[test]
    fn issue16_bars_read_the_default_path_rows_and_the_faststream_peer() {
        let mut s = ScenarioResult {
            name: "default-path".into(),
            ..Default::default()
        };
        for (label, eps) in [
            ("baseline: native", 200_000.0),
            (crate::scenarios::FASTSTREAM_ROW, 10_000.0),
            ("sluice default (fresh instance, KV dedup)", 30_000.0),
            ("sluice fresh instance, dedup off", 40_000.0),
            ("sluice isolation = \"reuse\", KV dedup", 70_000.0),
            ("sluice isolation = \"reuse\", dedup off", 130_000.0),
        ] {
            let mut r = Row::new(label);
            r.events_per_s = Some(eps);
            s.rows.push(r);
        }
        s.fill_ratios();
        let bars = issue16(&[s], 10_000);
        let by_name = |part: &str| bars.iter().find(|b| b.name.contains(part)).unwrap();
        let default = by_name("default config (fresh instance, KV dedup)");
        assert_eq!((default.measured, default.pass), (Some(0.15), Some(true)));
        let peer = by_name("FastStream");
        assert_eq!((peer.measured, peer.pass), (Some(3.0), Some(true)));
        let reuse_kv = by_name("+ KV dedup");
        assert_eq!(
            (reuse_kv.measured, reuse_kv.pass),
            (Some(0.35), Some(false))
        );
        let reuse = by_name("dedup off, JetStream");
        assert_eq!((reuse.measured, reuse.pass), (Some(0.65), Some(true)));
        // No core-default scenario: its bars are not judged.
        assert!(
            bars.iter()
                .filter(|b| b.source.starts_with("core-default"))
                .all(|b| b.pass.is_none())
        );
    }
}
