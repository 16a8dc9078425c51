//! Counters of the indexer, rendered in the Prometheus text format.
//!
//! Plain atomics rather than a metrics crate: a dozen counters do not justify a
//! registry, and the binary only needs text it can serve at `/metrics`, written by
//! the shared [`protocol::metrics::Exposition`]. Commit time
//! is a histogram ([`protocol::histogram`]), so a p99 can be read from it.

use protocol::metrics::{Exposition, Kind};
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
    /// Times a shard consumer started behind the ingest log's first record while
    /// the log had a byte bound: records it could not rebuild (issue 21).
    pub ingest_log_trimmed: AtomicU64,
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
        let mut e = Exposition::new();
        e.single(
            "sandtrail_indexer_ingest_requests_total",
            "Ingest requests received.",
            Kind::Counter,
            get(&self.ingest_requests),
        );
        e.single(
            "sandtrail_indexer_ingest_rejected_total",
            "Ingest requests refused (bad body, bad token, too large, failed commit).",
            Kind::Counter,
            get(&self.ingest_rejected),
        );
        e.single(
            "sandtrail_indexer_records_accepted_total",
            "Records newly indexed.",
            Kind::Counter,
            get(&self.records_accepted),
        );
        e.single(
            "sandtrail_indexer_records_duplicate_total",
            "Records skipped because their (source, offset) was already committed.",
            Kind::Counter,
            get(&self.records_duplicate),
        );
        e.single(
            "sandtrail_indexer_commits_total",
            "Tantivy commits (one per group of ingest requests).",
            Kind::Counter,
            get(&self.commits),
        );
        e.single(
            "sandtrail_indexer_commit_errors_total",
            "Tantivy commits that failed and were rolled back.",
            Kind::Counter,
            get(&self.commit_errors),
        );
        e.single(
            "sandtrail_indexer_searches_total",
            "Search requests served.",
            Kind::Counter,
            get(&self.searches),
        );
        e.single(
            "sandtrail_indexer_search_errors_total",
            "Search or histogram requests that failed.",
            Kind::Counter,
            get(&self.search_errors),
        );
        e.single(
            "sandtrail_indexer_histograms_total",
            "Histogram requests served.",
            Kind::Counter,
            get(&self.histograms),
        );
        e.single(
            "sandtrail_indexer_tail_dropped_total",
            "Records a slow tail subscriber missed.",
            Kind::Counter,
            get(&self.tail_dropped),
        );
        e.single(
            "sandtrail_indexer_docs",
            "Documents searchable now.",
            Kind::Gauge,
            gauges.docs,
        );
        e.single(
            "sandtrail_indexer_merges_pending",
            "1 while merges held back during a burst are due or running.",
            Kind::Gauge,
            get(&self.merges_pending),
        );
        e.single(
            "sandtrail_indexer_wal_bytes",
            "Bytes of the ingest write-ahead log on disk (acknowledged batches not yet released by a commit).",
            Kind::Gauge,
            get(&self.wal_bytes),
        );
        e.single(
            "sandtrail_indexer_records_logged_total",
            "Records acknowledged once in the write-ahead log (refresh=false), before their commit.",
            Kind::Counter,
            get(&self.records_logged),
        );
        e.single(
            "sandtrail_indexer_ingest_log_trimmed_total",
            "Shard consumers (shard mode) that started behind the ingest log's first record, trimmed by its byte bound: records this owner could not rebuild.",
            Kind::Counter,
            get(&self.ingest_log_trimmed),
        );
        e.single(
            "sandtrail_indexer_segments",
            "Tantivy segments searchable now.",
            Kind::Gauge,
            gauges.segments,
        );
        e.single(
            "sandtrail_indexer_tail_subscribers",
            "Live tail subscribers.",
            Kind::Gauge,
            gauges.tail_subscribers,
        );
        e.histogram(
            "sandtrail_indexer_commit_seconds",
            "How long Tantivy commits took.",
            &[],
            &self.commit_seconds,
        );
        e.histogram(
            "sandtrail_indexer_search_seconds",
            "How long searches took, from their start on the blocking pool to their answer (search, histogram, fields, latency, context and Elasticsearch _search and _count).",
            &[],
            &self.search_seconds,
        );
        e.histogram(
            "sandtrail_indexer_tail_delivery_seconds",
            "From a record's admission by the writer to a live-tail subscriber's connection taking it.",
            &[],
            &self.tail_delivery_seconds,
        );
        e.finish()
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
