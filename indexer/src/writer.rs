//! The write path: one OS thread owns the Tantivy `IndexWriter`, takes ingest requests
//! from a channel, and group-commits them.
//!
//! Whatever is queued when the thread wakes up is added and committed together, then
//! the reader is reloaded and every request of the group is answered. Under load
//! that gives one commit per "round" instead of one per request, and at rest a
//! request is committed as soon as it arrives; either way an ingest is answered only
//! once its records are durable and searchable. The trade-off: one failing commit
//! fails every request of its group (they are all rolled back and all retried by
//! their shippers, which exactly-once makes harmless).
//!
//! Exactly-once: the [`Checkpoint`] (highest committed offset per source) is written
//! as the commit payload, so it is atomic with the documents it describes, and read
//! back from the last commit at open.

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::schema::Fields;
use protocol::{IngestResponse, LogRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Instant;
use tantivy::{Index, IndexReader, IndexWriter, TantivyDocument};
use tokio::sync::{broadcast, mpsc, oneshot};

/// How many requests may wait for the writer before `ingest` applies back-pressure.
pub const QUEUE_DEPTH: usize = 64;

/// Highest committed offset of every source, as stored in the commit payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub offsets: BTreeMap<String, u64>,
}

impl Checkpoint {
    /// Reads the payload of the last commit; an index that was never committed (or a
    /// commit without payload) starts empty.
    pub fn from_payload(payload: Option<&str>) -> Result<Checkpoint> {
        match payload {
            None => Ok(Checkpoint::default()),
            Some(p) if p.trim().is_empty() => Ok(Checkpoint::default()),
            Some(p) => serde_json::from_str(p).map_err(|e| Error::BadPayload {
                payload: p.chars().take(200).collect(),
                reason: e.to_string(),
            }),
        }
    }

    pub fn to_payload(&self) -> String {
        // A map of strings to integers always serialises.
        serde_json::to_string(self).expect("checkpoint serialises")
    }

    /// Whether the record at (`source`, `offset`) is new; if so, it now counts as
    /// seen. Records without a source cannot be deduplicated and are always new.
    pub fn admit(&mut self, source: &str, offset: u64) -> bool {
        if source.is_empty() {
            return true;
        }
        match self.offsets.get_mut(source) {
            Some(seen) if offset <= *seen => false,
            Some(seen) => {
                *seen = offset;
                true
            }
            None => {
                self.offsets.insert(source.to_string(), offset);
                true
            }
        }
    }
}

pub enum WriterMsg {
    Ingest {
        records: Vec<LogRecord>,
        reply: oneshot::Sender<Result<IngestResponse>>,
    },
    /// Commit what is pending, wait for merges, stop.
    Shutdown { reply: oneshot::Sender<()> },
}

/// Everything the writer thread owns.
pub struct WriterThread {
    pub writer: IndexWriter<TantivyDocument>,
    pub reader: IndexReader,
    pub fields: Fields,
    pub checkpoint: Checkpoint,
    pub tail: broadcast::Sender<Arc<LogRecord>>,
    pub metrics: Arc<Metrics>,
    uids: UidSource,
}

impl WriterThread {
    pub fn new(
        index: &Index,
        memory_bytes: usize,
        reader: IndexReader,
        fields: Fields,
        tail: broadcast::Sender<Arc<LogRecord>>,
        metrics: Arc<Metrics>,
    ) -> Result<WriterThread> {
        let checkpoint = Checkpoint::from_payload(index.load_metas()?.payload.as_deref())?;
        // Tantivy wants at least 15 MB per indexing thread; more threads than cores
        // only adds memory.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (memory_bytes / (32 << 20)).clamp(1, cores.min(4));
        let writer = index.writer_with_num_threads(threads, memory_bytes)?;
        Ok(WriterThread {
            writer,
            reader,
            fields,
            checkpoint,
            tail,
            metrics,
            uids: UidSource::new(),
        })
    }

    /// Runs until a shutdown message arrives or every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        tracing::info!(
            sources = self.checkpoint.offsets.len(),
            "index writer started"
        );
        let mut stop_replies = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while let Ok(more) = rx.try_recv() {
                group.push(more);
            }
            stop_replies.extend(self.commit_group(group));
            if !stop_replies.is_empty() {
                break;
            }
        }
        // Refuse (by dropping) whatever arrives from now on, then let merges finish
        // so the directory is left tidy and the lock released.
        drop(rx);
        if let Err(e) = self.writer.wait_merging_threads() {
            tracing::warn!(error = %e, "waiting for merges at shutdown failed");
        }
        tracing::info!("index writer stopped");
        for reply in stop_replies {
            let _ = reply.send(());
        }
    }

    /// Adds and commits one group; returns the replies of any shutdown requests in it.
    fn commit_group(&mut self, group: Vec<WriterMsg>) -> Vec<oneshot::Sender<()>> {
        let before = self.checkpoint.clone();
        let mut waiting = Vec::new();
        let mut stops = Vec::new();
        let mut failure: Option<String> = None;
        let mut added = 0u64;
        for msg in group {
            match msg {
                WriterMsg::Shutdown { reply } => stops.push(reply),
                WriterMsg::Ingest { records, reply } => {
                    let mut resp = IngestResponse::default();
                    if failure.is_none() {
                        for rec in records {
                            if !self.checkpoint.admit(&rec.source, rec.offset) {
                                resp.duplicates += 1;
                                continue;
                            }
                            let doc = self.fields.to_document(&rec, self.uids.next());
                            if let Err(e) = self.writer.add_document(doc) {
                                failure = Some(e.to_string());
                                break;
                            }
                            resp.accepted += 1;
                            // The tail sees records as soon as they are accepted,
                            // without waiting for the commit.
                            let _ = self.tail.send(Arc::new(rec));
                        }
                    }
                    added += resp.accepted;
                    waiting.push((reply, resp));
                }
            }
        }
        if failure.is_none() && added > 0 {
            let started = Instant::now();
            match self.commit() {
                Ok(()) => {
                    Metrics::inc(&self.metrics.commits, 1);
                    Metrics::inc(
                        &self.metrics.commit_micros,
                        started.elapsed().as_micros() as u64,
                    );
                    tracing::debug!(
                        records = added,
                        requests = waiting.len(),
                        ms = started.elapsed().as_millis() as u64,
                        "group committed"
                    );
                }
                Err(e) => failure = Some(e.to_string()),
            }
        }
        match failure {
            None => {
                for (reply, resp) in waiting {
                    Metrics::inc(&self.metrics.records_accepted, resp.accepted);
                    Metrics::inc(&self.metrics.records_duplicate, resp.duplicates);
                    let _ = reply.send(Ok(resp));
                }
            }
            Some(reason) => {
                Metrics::inc(&self.metrics.commit_errors, 1);
                tracing::error!(error = %reason, requests = waiting.len(), "commit failed, rolling back the group");
                if let Err(e) = self.writer.rollback() {
                    tracing::error!(error = %e, "rollback failed");
                }
                self.checkpoint = before;
                for (reply, _) in waiting {
                    let _ = reply.send(Err(Error::Index(format!(
                        "commit failed, nothing of the batch was indexed: {reason}"
                    ))));
                }
            }
        }
        stops
    }

    fn commit(&mut self) -> Result<()> {
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&self.checkpoint.to_payload());
        prepared.commit()?;
        // The data is durable even if the reload fails; the next commit's reload
        // will make it visible.
        if let Err(e) = self.reader.reload() {
            tracing::warn!(error = %e, "reader reload after commit failed");
        }
        Ok(())
    }
}

/// Random, unique-enough 64-bit tie-breakers (splitmix64 over a random seed).
struct UidSource {
    state: u64,
}

impl UidSource {
    fn new() -> UidSource {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        UidSource { state: h.finish() }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_or_missing_payload_is_an_empty_checkpoint() {
        assert_eq!(
            Checkpoint::from_payload(None).unwrap(),
            Checkpoint::default()
        );
        assert_eq!(
            Checkpoint::from_payload(Some("")).unwrap(),
            Checkpoint::default()
        );
    }

    #[test]
    fn corrupt_payload_is_an_error_not_a_silent_reset() {
        let err = Checkpoint::from_payload(Some("{nope")).unwrap_err();
        assert!(err.to_string().contains("{nope"), "{err}");
    }

    #[test]
    fn admit_skips_at_or_below_the_seen_offset() {
        let mut c = Checkpoint::default();
        assert!(c.admit("a", 10));
        assert!(!c.admit("a", 10));
        assert!(!c.admit("a", 3));
        assert!(c.admit("a", 11));
        assert!(c.admit("b", 0));
        assert!(!c.admit("b", 0));
        assert!(c.admit("", 5) && c.admit("", 5), "no source, no dedup");
    }

    #[test]
    fn uids_do_not_repeat() {
        let mut u = UidSource::new();
        let set: std::collections::HashSet<u64> = (0..10_000).map(|_| u.next()).collect();
        assert_eq!(set.len(), 10_000);
    }

    proptest! {
        /// Replaying any prefix of what was admitted admits nothing again, and the
        /// payload round-trips.
        #[test]
        fn replay_admits_nothing_and_payload_round_trips(
            batch in proptest::collection::vec((0usize..4, 0u64..1000), 0..60),
            replay_len in 0usize..60,
        ) {
            let sources = ["a", "b", "c", "d"];
            // Offsets grow within a source, as shippers send them.
            let mut sorted = batch.clone();
            sorted.sort_by_key(|(_, o)| *o);
            let mut c = Checkpoint::default();
            for (s, o) in &sorted {
                c.admit(sources[*s], *o);
            }
            let mut reopened = Checkpoint::from_payload(Some(&c.to_payload())).unwrap();
            prop_assert_eq!(&reopened, &c);
            for (s, o) in sorted.iter().take(replay_len) {
                prop_assert!(!reopened.admit(sources[*s], *o));
            }
        }
    }
}
