//! Counters and gauges the shipper exposes in the Prometheus text format.
//!
//! Plain atomics and one small locked map (lag per file), updated from the shipper's
//! loop and read by whoever serves `/metrics`. Every series carries a `host` label so
//! several agents in one process (`sandtrail up`) do not collide; the trade-off is that
//! the embedding binary must merge `# HELP`/`# TYPE` lines if it concatenates them.
//! Written with the shared [`protocol::metrics::Exposition`].

use protocol::metrics::{Exposition, Fixed, Kind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Metrics {
    pub lines_read: AtomicU64,
    pub bytes_read: AtomicU64,
    pub lines_truncated: AtomicU64,
    pub records_shipped: AtomicU64,
    pub batches_sent: AtomicU64,
    pub batches_failed: AtomicU64,
    pub batches_rejected: AtomicU64,
    pub records_rejected: AtomicU64,
    pub retries: AtomicU64,
    pub files_truncated: AtomicU64,
    pub files_rotated: AtomicU64,
    pub checkpoint_errors: AtomicU64,
    pub read_errors: AtomicU64,
    /// Batches written to the disk spool.
    pub batches_spooled: AtomicU64,
    /// NDJSON bytes of acknowledged batches, and what they took on the wire
    /// (compressed): their ratio is what the compression buys.
    pub ndjson_bytes_sent: AtomicU64,
    pub wire_bytes_sent: AtomicU64,
    /// Bytes of each file not yet acknowledged by the indexer, by source.
    pub lag: Mutex<BTreeMap<String, u64>>,
    /// Seconds each file has had bytes not yet acknowledged, by source.
    pub lag_seconds: Mutex<BTreeMap<String, f64>>,
    /// Bytes and batches in the disk spool (gauges).
    pub spool_bytes: AtomicU64,
    pub spool_batches: AtomicU64,
    /// Unread bytes of rotated files given up on for a task's disk budget, and how
    /// many files that was (each also written into the task's stream as a record).
    pub log_bytes_dropped: AtomicU64,
    pub log_files_dropped: AtomicU64,
    /// 1 while the reader waits for the indexer: busy, or the spool full or disabled
    /// (gauge).
    pub reading_paused: AtomicU64,
    /// Live and rotated log files of every sandbox, in bytes, at the last scan (gauge).
    pub log_bytes_on_disk: AtomicU64,
    /// The disk budgets of the sandboxes that have one, summed, at the last scan
    /// (gauge): what the Hosts page shows `log_bytes_on_disk` against.
    pub log_budget_bytes: AtomicU64,
    /// Sandbox files not read because they were symlinks, not regular files, or a
    /// `task.json` the node did not write: each counted once while it stays so.
    pub files_refused: AtomicU64,
    /// Reading rounds over the followed files (each one reads every file).
    pub read_rounds: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn render(&self, host: &str) -> String {
        let mut e = Exposition::new();
        let counters: [(&str, &str, &AtomicU64); 20] = [
            (
                "ndjson_bytes_sent_total",
                "Uncompressed NDJSON bytes of batches the indexer acknowledged.",
                &self.ndjson_bytes_sent,
            ),
            (
                "wire_bytes_sent_total",
                "Compressed bytes of batches the indexer acknowledged.",
                &self.wire_bytes_sent,
            ),
            (
                "lines_read_total",
                "Lines read from tailed files.",
                &self.lines_read,
            ),
            (
                "bytes_read_total",
                "Bytes read from tailed files.",
                &self.bytes_read,
            ),
            (
                "lines_truncated_total",
                "Lines cut at max_line_bytes.",
                &self.lines_truncated,
            ),
            (
                "records_shipped_total",
                "Records acknowledged by the indexer.",
                &self.records_shipped,
            ),
            (
                "batches_sent_total",
                "Batches acknowledged by the indexer.",
                &self.batches_sent,
            ),
            (
                "batches_failed_total",
                "Batch attempts that failed and will be retried.",
                &self.batches_failed,
            ),
            (
                "batches_rejected_total",
                "Batches (or parts) the indexer refused as bad with a 4xx.",
                &self.batches_rejected,
            ),
            (
                "records_rejected_total",
                "Records skipped because the indexer refused them.",
                &self.records_rejected,
            ),
            (
                "retries_total",
                "Batch retries after a back-off.",
                &self.retries,
            ),
            (
                "files_truncated_total",
                "Files found truncated or rewritten and restarted under a new source.",
                &self.files_truncated,
            ),
            (
                "files_rotated_total",
                "Files renamed away from their path and read to their end.",
                &self.files_rotated,
            ),
            (
                "checkpoint_errors_total",
                "Failed checkpoint saves.",
                &self.checkpoint_errors,
            ),
            ("read_errors_total", "Failed file reads.", &self.read_errors),
            (
                "files_refused_total",
                "Sandbox files not read because they were symlinks, not regular files or not the node's (a task must not make the shipper read outside its sandbox).",
                &self.files_refused,
            ),
            (
                "read_rounds_total",
                "Reading rounds over every followed file (those started by file events at most one per 25 ms).",
                &self.read_rounds,
            ),
            (
                "batches_spooled_total",
                "Batches written to the disk spool because the indexer was slow or down.",
                &self.batches_spooled,
            ),
            (
                "log_bytes_dropped_total",
                "Unread bytes of rotated task log files dropped because the task's disk budget was reached.",
                &self.log_bytes_dropped,
            ),
            (
                "log_files_dropped_total",
                "Rotated task log files whose unread part was dropped for the task's disk budget (one record each in the task's stream).",
                &self.log_files_dropped,
            ),
        ];
        for (name, help, value) in counters {
            e.family(&format!("sandtrail_agent_{name}"), help, Kind::Counter)
                .sample(&[("host", host)], value.load(Ordering::Relaxed));
        }
        e.family(
            "sandtrail_agent_lag_bytes",
            "Bytes of a file (read or not) not yet acknowledged by the indexer.",
            Kind::Gauge,
        );
        let lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        for (source, bytes) in lag.iter() {
            e.sample(&[("host", host), ("source", source)], *bytes);
        }
        drop(lag);
        e.family(
            "sandtrail_agent_lag_seconds",
            "How long a file has had bytes not yet acknowledged by the indexer.",
            Kind::Gauge,
        );
        let lag = self.lag_seconds.lock().unwrap_or_else(|p| p.into_inner());
        for (source, secs) in lag.iter() {
            e.sample(&[("host", host), ("source", source)], Fixed(*secs, 3));
        }
        drop(lag);
        for (name, help, value) in [
            (
                "spool_bytes",
                "Bytes of batches waiting in the disk spool.",
                &self.spool_bytes,
            ),
            (
                "spool_batches",
                "Batches waiting in the disk spool.",
                &self.spool_batches,
            ),
            (
                "reading_paused",
                "1 while reading waits for the indexer: busy (a batch in flight, the queue full) or the spool full or disabled (back-pressure).",
                &self.reading_paused,
            ),
            (
                "log_bytes_on_disk",
                "Bytes of task log files (live and rotated) in all sandboxes at the last scan.",
                &self.log_bytes_on_disk,
            ),
            (
                "log_budget_bytes",
                "Disk budgets of the sandboxes that have one, summed, at the last scan.",
                &self.log_budget_bytes,
            ),
        ] {
            e.family(&format!("sandtrail_agent_{name}"), help, Kind::Gauge)
                .sample(&[("host", host)], value.load(Ordering::Relaxed));
        }
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_lag_with_escaped_labels() {
        let m = Metrics::default();
        inc(&m.lines_read, 3);
        m.lag.lock().unwrap().insert("n/a\"b/t/stdout".into(), 17);
        let text = m.render("node-1");
        assert!(
            text.contains("sandtrail_agent_lines_read_total{host=\"node-1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sandtrail_agent_retries_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "sandtrail_agent_lag_bytes{host=\"node-1\",source=\"n/a\\\"b/t/stdout\"} 17\n"
            ),
            "{text}"
        );
        m.lag_seconds.lock().unwrap().insert("s@1".into(), 2.5);
        m.spool_bytes.store(4096, Ordering::Relaxed);
        let text = m.render("node-1");
        for want in [
            "sandtrail_agent_lag_seconds{host=\"node-1\",source=\"s@1\"} 2.500\n",
            "# TYPE sandtrail_agent_spool_bytes gauge\n",
            "sandtrail_agent_spool_bytes{host=\"node-1\"} 4096\n",
            "sandtrail_agent_spool_batches{host=\"node-1\"} 0\n",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }

    /// Each family is declared once (one HELP, one TYPE, before its samples) and every
    /// sample belongs to a declared family with the host label, as `promtool check
    /// metrics` wants; the back-pressure and budget families are among them.
    #[test]
    fn every_family_is_declared_once_and_clean() {
        let m = Metrics::default();
        m.lag.lock().unwrap().insert("a@1".into(), 1);
        m.lag_seconds.lock().unwrap().insert("a@1".into(), 1.0);
        inc(&m.log_bytes_dropped, 700);
        inc(&m.log_files_dropped, 1);
        m.reading_paused.store(1, Ordering::Relaxed);
        m.log_bytes_on_disk.store(5000, Ordering::Relaxed);
        m.log_budget_bytes.store(8000, Ordering::Relaxed);
        let text = m.render("node-1");
        let mut help = std::collections::BTreeMap::<&str, usize>::new();
        let mut types = std::collections::BTreeMap::<&str, &str>::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, h) = rest.split_once(' ').unwrap();
                assert!(!h.trim().is_empty(), "{line}");
                *help.entry(name).or_default() += 1;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(types.insert(name, kind).is_none(), "{name} declared twice");
                assert!(help.contains_key(name), "TYPE of {name} before its HELP");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(types.contains_key(name), "{line} has no TYPE");
                assert!(line.contains("{host=\"node-1\""), "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert!(help.values().all(|n| *n == 1), "{help:?}");
        assert_eq!(help.len(), types.len());
        for (name, kind, value) in [
            ("log_bytes_dropped_total", "counter", "700"),
            ("log_files_dropped_total", "counter", "1"),
            ("reading_paused", "gauge", "1"),
            ("log_bytes_on_disk", "gauge", "5000"),
            ("log_budget_bytes", "gauge", "8000"),
        ] {
            let family = format!("sandtrail_agent_{name}");
            assert_eq!(types.get(family.as_str()), Some(&kind), "{text}");
            assert!(
                text.contains(&format!("{family}{{host=\"node-1\"}} {value}\n")),
                "{text}"
            );
        }
    }
}
