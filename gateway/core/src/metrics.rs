//! `/metrics`: what the gateway counts, in Prometheus' text format.
//!
//! One process-wide registry: counters and histograms keyed by their labels, updated where the
//! thing happens (a session opens, a frame is recorded, a plugin call returns, a commit ends)
//! and rendered on request. Cheap enough for the frame path: an uncontended lock and a map
//! lookup per update.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Histogram bucket bounds, in seconds: plugin calls take microseconds, commits milliseconds.
const BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    /// Observations at or below each bound of [`BUCKETS`].
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// metric -> labels -> value.
#[derive(Default)]
struct Registry {
    counters: BTreeMap<&'static str, BTreeMap<String, u64>>,
    histograms: BTreeMap<&'static str, BTreeMap<String, Histogram>>,
}

/// The entry for `labels`, made (and its labels copied) only the first time.
fn entry<'a, T: Default>(map: &'a mut BTreeMap<String, T>, labels: &str) -> &'a mut T {
    if !map.contains_key(labels) {
        map.insert(labels.to_string(), T::default());
    }
    match map.get_mut(labels) {
        Some(value) => value,
        None => unreachable!("inserted above"),
    }
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// `name="value",…` with values escaped as the format requires.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let value = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{name}=\"{value}\"");
    }
    out
}

/// Adds `by` to counter `name` with `labels`.
pub fn count(name: &'static str, labels: &str, by: u64) {
    let mut registry = registry();
    *entry(registry.counters.entry(name).or_default(), labels) += by;
}

/// Records one observation of `took` in histogram `name` with `labels`.
pub fn observe(name: &'static str, labels: &str, took: Duration) {
    let seconds = took.as_secs_f64();
    let mut registry = registry();
    let h = entry(registry.histograms.entry(name).or_default(), labels);
    for (bucket, bound) in h.buckets.iter_mut().zip(BUCKETS) {
        if seconds <= *bound {
            *bucket += 1;
        }
    }
    h.count += 1;
    h.sum += seconds;
}

/// Every metric, with `gauges` (computed by the caller now: name, help, labels, value)
/// first; series of one gauge come together.
pub fn render(gauges: &[(&str, &str, String, f64)]) -> String {
    let mut out = String::new();
    let mut previous = "";
    for (name, help, labels, value) in gauges {
        if *name != previous {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            previous = name;
        }
        let _ = writeln!(out, "{name}{} {value}", braced(labels));
    }
    let registry = registry();
    for (name, series) in &registry.counters {
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} counter", help(name));
        for (labels, value) in series {
            let _ = writeln!(out, "{name}{} {value}", braced(labels));
        }
    }
    for (name, series) in &registry.histograms {
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", help(name));
        for (labels, h) in series {
            let sep = if labels.is_empty() { "" } else { "," };
            // Buckets are cumulative: each counts the observations at or below its bound.
            for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{} {}", braced(labels), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", braced(labels), h.count);
        }
    }
    out
}

fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

fn help(name: &str) -> &'static str {
    match name {
        SESSIONS => "Sessions opened, by connection.",
        FRAMES => "Frames recorded, by connection, direction and outcome (pass, hold, deny).",
        PLUGIN_CALLS => "Time of each filter plugin call, by plugin.",
        COMMITS => "Time of each record commit (a group of events made durable).",
        EVENTS => "Events appended to the record.",
        REFUSALS => "Actions refused for want of a role, by role.",
        SINK_EVENTS => "Events a sink delivered (accepted by its backend), by sink.",
        SINK_FAILURES => "Failed sink deliveries (retried, or stopping the sink), by sink.",
        _ => "",
    }
}

pub const SESSIONS: &str = "sluice_sessions_total";
pub const FRAMES: &str = "sluice_frames_total";
pub const PLUGIN_CALLS: &str = "sluice_plugin_call_seconds";
pub const COMMITS: &str = "sluice_record_commit_seconds";
pub const EVENTS: &str = "sluice_record_events_total";
pub const REFUSALS: &str = "sluice_refusals_total";
pub const SINK_EVENTS: &str = "sluice_sink_events_total";
pub const SINK_FAILURES: &str = "sluice_sink_failures_total";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        count("sluice_test_total", &labels(&[("a", "x\"y")]), 2);
        observe(
            "sluice_test_seconds",
            &labels(&[("p", "m")]),
            Duration::from_micros(70),
        );
        observe(
            "sluice_test_seconds",
            &labels(&[("p", "m")]),
            Duration::from_millis(2),
        );
        let text = render(&[("sluice_test_open", "Open things.", String::new(), 3.0)]);
        assert!(text.contains("sluice_test_open 3\n"), "{text}");
        assert!(
            text.contains("sluice_test_total{a=\"x\\\"y\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_test_seconds_bucket{p=\"m\",le=\"0.00005\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_test_seconds_bucket{p=\"m\",le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_test_seconds_bucket{p=\"m\",le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_test_seconds_count{p=\"m\"} 2\n"),
            "{text}"
        );
    }
}
