//! Counters of the indexer, rendered in the Prometheus text format.
//!
//! Plain atomics rather than a metrics crate: a dozen counters do not justify a
//! registry, and the binary only needs text it can serve at `/metrics`. Commit time
//! is a histogram ([`protocol::histogram`]), so a p99 can be read from it.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub ingest_requests: AtomicU64,
    pub ingest_rejected: AtomicU64,
    pub records_accepted: AtomicU64,
    pub records_duplicate: AtomicU64,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    /// How long Tantivy commits took.
    pub commit_seconds: protocol::histogram::Histogram,
    pub searches: AtomicU64,
    /// How long searches took (every kind, native and Elasticsearch).
    pub search_seconds: protocol::histogram::Histogram,
    /// From a record's admission to a live-tail subscriber's connection taking it.
    pub tail_delivery_seconds: protocol::histogram::Histogram,
    pub search_errors: AtomicU64,
    pub histograms: AtomicU64,
    pub tail_dropped: AtomicU64,
    /// 1 while merges are held back or running (see [`crate::merge`]), else 0.
    pub merges_pending: AtomicU64,
    /// Bytes of the write-ahead log on disk (see [`crate::wal`]).
    pub wal_bytes: AtomicU64,
    /// Records answered from the write-ahead log before their commit.
    pub records_logged: AtomicU64,
}

/// Values that are read at render time rather than counted.
pub struct Gauges {
    pub docs: u64,
    pub segments: u64,
    pub tail_subscribers: u64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            // Writing into a String cannot fail.
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        line(
            "sandtrail_indexer_ingest_requests_total",
            "counter",
            "Ingest requests received.",
            get(&self.ingest_requests).to_string(),
        );
        line(
            "sandtrail_indexer_ingest_rejected_total",
            "counter",
            "Ingest requests refused (bad body, bad token, too large, failed commit).",
            get(&self.ingest_rejected).to_string(),
        );
        line(
            "sandtrail_indexer_records_accepted_total",
            "counter",
            "Records newly indexed.",
            get(&self.records_accepted).to_string(),
        );
        line(
            "sandtrail_indexer_records_duplicate_total",
            "counter",
            "Records skipped because their (source, offset) was already committed.",
            get(&self.records_duplicate).to_string(),
        );
        line(
            "sandtrail_indexer_commits_total",
            "counter",
            "Tantivy commits (one per group of ingest requests).",
            get(&self.commits).to_string(),
        );
        line(
            "sandtrail_indexer_commit_errors_total",
            "counter",
            "Tantivy commits that failed and were rolled back.",
            get(&self.commit_errors).to_string(),
        );
        line(
            "sandtrail_indexer_searches_total",
            "counter",
            "Search requests served.",
            get(&self.searches).to_string(),
        );
        line(
            "sandtrail_indexer_search_errors_total",
            "counter",
            "Search or histogram requests that failed.",
            get(&self.search_errors).to_string(),
        );
        line(
            "sandtrail_indexer_histograms_total",
            "counter",
            "Histogram requests served.",
            get(&self.histograms).to_string(),
        );
        line(
            "sandtrail_indexer_tail_dropped_total",
            "counter",
            "Records a slow tail subscriber missed.",
            get(&self.tail_dropped).to_string(),
        );
        line(
            "sandtrail_indexer_docs",
            "gauge",
            "Documents searchable now.",
            gauges.docs.to_string(),
        );
        line(
            "sandtrail_indexer_merges_pending",
            "gauge",
            "1 while merges held back during a burst are due or running.",
            get(&self.merges_pending).to_string(),
        );
        line(
            "sandtrail_indexer_wal_bytes",
            "gauge",
            "Bytes of the ingest write-ahead log on disk (acknowledged batches not yet released by a commit).",
            get(&self.wal_bytes).to_string(),
        );
        line(
            "sandtrail_indexer_records_logged_total",
            "counter",
            "Records acknowledged once in the write-ahead log (refresh=false), before their commit.",
            get(&self.records_logged).to_string(),
        );
        line(
            "sandtrail_indexer_segments",
            "gauge",
            "Tantivy segments searchable now.",
            gauges.segments.to_string(),
        );
        line(
            "sandtrail_indexer_tail_subscribers",
            "gauge",
            "Live tail subscribers.",
            gauges.tail_subscribers.to_string(),
        );
        self.commit_seconds.render(
            &mut out,
            "sandtrail_indexer_commit_seconds",
            "How long Tantivy commits took.",
            "",
        );
        self.search_seconds.render(
            &mut out,
            "sandtrail_indexer_search_seconds",
            "How long searches took, from their start on the blocking pool to their answer (search, histogram, fields, latency, context and Elasticsearch _search and _count).",
            "",
        );
        self.tail_delivery_seconds.render(
            &mut out,
            "sandtrail_indexer_tail_delivery_seconds",
            "From a record's admission by the writer to a live-tail subscriber's connection taking it.",
            "",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_with_type_lines() {
        let m = Metrics::default();
        Metrics::inc(&m.records_accepted, 3);
        let text = m.render(&Gauges {
            docs: 3,
            segments: 1,
            tail_subscribers: 0,
        });
        assert!(
            text.contains("sandtrail_indexer_records_accepted_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sandtrail_indexer_docs gauge\n"),
            "{text}"
        );
        // One sample per counter or gauge; the commit histogram has its buckets.
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_seconds"))
            .count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(samples, types - 3);
        for h in ["commit", "search", "tail_delivery"] {
            assert!(
                text.contains(&format!("# TYPE sandtrail_indexer_{h}_seconds histogram\n")),
                "{text}"
            );
        }
        assert!(
            text.contains("# TYPE sandtrail_indexer_commit_seconds histogram\n"),
            "{text}"
        );
    }
}
