//! A Prometheus histogram of durations: fixed buckets, lock-free counts, rendered as
//! `_bucket{le=...}`, `_sum` and `_count` so that Grafana and PromQL's
//! `histogram_quantile` give a p99. Hand-written rather than a metrics crate because
//! the rest of our exposition is written by our own small writer
//! ([`crate::metrics::Exposition`], which renders these); the buckets are Prometheus's
//! client defaults, from a millisecond to ten seconds.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds (the `+Inf` bucket is implicit).
pub const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Observations of durations, counted per bucket.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound and above the previous one; the last slot
    /// is above every bound.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the family `name` (HELP, TYPE and its series) to `out`; `labels` are
    /// already escaped `k="v"` pairs joined by commas, or empty.
    pub fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[DURATION_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(
            out,
            "{name}_sum{} {:.6}\n{name}_count{} {}",
            braces(labels),
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            braces(labels),
            // The count is the +Inf bucket's: the two must agree in one scrape.
            cumulative
        );
    }
}

/// A Prometheus label value as the text format wants it: backslash, double quote
/// and newline escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_label("node-1"), "node-1");
    }

    #[test]
    fn renders_cumulative_buckets_sum_and_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(20));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "X.", "host=\"a\"");
        assert!(out.starts_with("# HELP x_seconds X.\n# TYPE x_seconds histogram\n"));
        assert!(
            out.contains("x_seconds_bucket{host=\"a\",le=\"0.001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{host=\"a\",le=\"0.025\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{host=\"a\",le=\"0.05\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{host=\"a\",le=\"10\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{host=\"a\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_sum{host=\"a\"} 20.030500\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{host=\"a\"} 3\n"), "{out}");
        let mut bare = String::new();
        Histogram::default().render(&mut bare, "y", "Y.", "");
        assert!(
            bare.contains("y_bucket{le=\"+Inf\"} 0\ny_sum 0.000000\ny_count 0\n"),
            "{bare}"
        );
    }
}
