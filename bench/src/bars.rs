//! The acceptance bars, judged from the scenario results.

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
}
