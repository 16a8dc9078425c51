//! The write path: one OS thread owns the Tantivy `IndexWriter`s (one per day
//! partition), takes logged requests from the log stage ([`crate::stage`]) in log
//! order, and group-commits them.
//!
//! Whatever is queued when the thread wakes up is added and committed together (and,
//! when the last commit was less than the commit interval ago, [`COMMIT_INTERVAL`]
//! unless configured, whatever arrives until then), then the reader is reloaded and
//! every request of the group is answered. Under load that gives about five commits
//! a second by default instead of one per request, and
//! at rest a request is committed as soon as it arrives; either way an ingest is answered only
//! once its records are durable and searchable. The trade-off: one failing commit
//! fails every request of its group (they are all rolled back and all retried by
//! their shippers, which exactly-once makes harmless).
//!
//! A request may instead ask to be answered once its body is in the fsynced
//! write-ahead log ([`Ack::Logged`], `refresh=false` on the wire, what the shipper
//! sends): the log stage answers it before the commit, even while this thread is
//! inside one, and a crash before that commit is repaired at the next open by
//! replaying the log (see [`crate::wal`]). One busy source then moves at the index's
//! speed instead of one batch per commit. A group that fails is undone and the log
//! entries it had applied are applied again at once: they are durable and may have
//! been answered.
//!
//! Exactly-once: the commit payload of every day partition a group touched is a
//! [`Payload`]: the [`Checkpoint`]'s offsets (highest committed offset per source)
//! after the group, with what is needed to undo a group whose partitions did not all
//! commit (see [`crate::partition`] for the argument) and the write-ahead log position
//! the commit covers. At open the checkpoint is read back from the newest payload.
//! A shard owner's stream position rides in the same offsets, as the pseudo-source
//! `protocol::shard::position_source` of a record that is admitted but never
//! indexed, so the position and the documents before it commit (and are undone)
//! together (see [`crate::ingest_log`]).

use crate::error::{Error, Result};
use crate::merge::{merges_due, DeferringMergePolicy, Duty, MergeGate, MERGE_WHEN_IDLE, SATURATED};
use crate::metrics::Metrics;
use crate::partition::{day_name, day_of, open_part, remove_dir, Part, Partitions, Payload};
use crate::schema::Fields;
use crate::stage::{Broken, LogStage, Staged};
use crate::wal::{Entry, Wal};
use axum::body::Bytes;
use chrono::NaiveDate;
use protocol::{IngestResponse, LogRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tantivy::{IndexWriter, TantivyDocument};
use tokio::sync::{mpsc, oneshot};

/// How many requests may wait for the writer before `ingest` applies back-pressure.
pub const QUEUE_DEPTH: usize = 64;

/// How often the retention is applied (when one is configured).
pub const RETENTION_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Commits are at least this far apart by default ([`crate::IndexerConfig::commit_interval`]):
/// a group that starts sooner after the last commit keeps collecting requests until then. At rest a request is committed at
/// once; under load this bounds the commit rate (each commit flushes segments that
/// must later be merged) at the price of up to this much added latency.
pub const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// A request's records as a log entry (zstd NDJSON, what the shipper sends), for
/// in-process callers that have no body.
pub(crate) fn log_body(records: &[LogRecord]) -> Bytes {
    let ndjson = protocol::encode_ndjson(records);
    // Compressing into memory cannot fail.
    Bytes::from(zstd::bulk::compress(&ndjson, 1).expect("zstd into memory"))
}

/// Cap on what one write-ahead log entry may inflate to at replay (it was accepted
/// under the request cap in force then, which may have been raised since).
const REPLAY_MAX_BYTES: usize = 1 << 30;

/// Highest committed offset of every source: what admission checks records against,
/// stored as the `offsets` of each commit's [`Payload`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub offsets: BTreeMap<String, u64>,
}

impl Checkpoint {
    /// Reads the `offsets` of a commit payload (the writer itself reads the whole
    /// [`Payload`]); no payload, or an empty one, is an empty checkpoint.
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

/// When an ingest request is answered. Either way its body goes to the write-ahead
/// log in admission order (only the answer waits for different things), so that a
/// replay applies the requests of an uncommitted group in the order they were
/// admitted. Logging only the early-answered ones lost records: a source's
/// `wait_for` request (offsets 1-3) and then its `refresh=false` request (4-6) in
/// one group, a crash before the commit, and the replay of 4-6 alone made the
/// resent 1-3 look like duplicates.
#[derive(Debug, Clone)]
pub enum Ack {
    /// Once its records are committed and searchable (`refresh=wait_for`), with
    /// the body as received when there is one (the records are encoded for the log
    /// when there is not: an in-process caller).
    Committed(Option<Bytes>),
    /// Once this body (the request as received, records and all) is durable in the
    /// write-ahead log; searchable by the next commit (`refresh=false`).
    Logged(Bytes),
}

pub enum WriterMsg {
    Ingest {
        records: Vec<LogRecord>,
        ack: Ack,
        reply: oneshot::Sender<Result<IngestResponse>>,
    },
    /// Documents of the Elasticsearch bulk API: deduplicated by `_id` (when given)
    /// instead of by source offset; one outcome per document, in order.
    Bulk {
        docs: Vec<BulkDoc>,
        reply: oneshot::Sender<Result<Vec<BulkOutcome>>>,
    },
    /// Commit what is pending, wait for merges, stop.
    Shutdown { reply: oneshot::Sender<()> },
    /// Start the merges held back while the writer was busy (see [`crate::merge`])
    /// now, instead of after [`MERGE_WHEN_IDLE`].
    MergeNow,
}

/// One document of a bulk request.
#[derive(Debug, Clone)]
pub struct BulkDoc {
    pub record: LogRecord,
    pub id: Option<String>,
    /// The document as the client sent it, when the record's ECS rendering differs
    /// (stored for `_source`, see `crate::es`).
    pub source: Option<serde_json::Value>,
}

/// What became of one bulk document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkOutcome {
    Created,
    /// Its `_id` was already indexed (or earlier in the same group).
    Duplicate,
}

/// Whether `day`'s partition has merges due or running (see [`merges_due`]).
fn day_merges_due(parts: &Partitions, day: NaiveDate) -> bool {
    parts
        .get(day)
        .and_then(|p| p.index.searchable_segment_metas().ok())
        .is_some_and(|metas| merges_due(&metas))
}

/// A reply the writer owes once its group is committed (or rolled back).
enum Waiting {
    Ingest(oneshot::Sender<Result<IngestResponse>>, IngestResponse),
    Bulk(oneshot::Sender<Result<Vec<BulkOutcome>>>, Vec<BulkOutcome>),
}

/// Everything the writer thread owns.
pub struct WriterThread {
    /// `data_dir/index`, holding one directory per day.
    root: PathBuf,
    parts: Partitions,
    /// Open writers, by day: those the last group touched, and the newest day's.
    writers: BTreeMap<NaiveDate, IndexWriter<TantivyDocument>>,
    memory_bytes: usize,
    threads: usize,
    /// Held closed while requests keep coming (see [`crate::merge`]).
    merge_gate: MergeGate,
    /// A [`WriterMsg::MergeNow`] arrived during a group.
    merge_requested: bool,
    /// How busy the writer has been lately: merges are held back while it works
    /// flat out (see [`crate::merge`]).
    duty: Duty,
    /// The last whole [`Duty`] window was busy [`crate::merge::SATURATED`] or more.
    saturated: bool,
    /// Merges started by [`WriterThread::merge_now`] may still be running: readers
    /// are reloaded when they finish (they are only reloaded by commits otherwise).
    merges_settling: bool,
    pub fields: Fields,
    pub checkpoint: Checkpoint,
    /// Number of the last committed group (see [`Payload::epoch`]).
    epoch: u64,
    pub tail: Arc<crate::tail::Hub>,
    pub metrics: Arc<Metrics>,
    uids: UidSource,
    /// Partitions whose whole day is older than this are dropped (see
    /// `WriterThread::enforce_retention`).
    pub retention: Option<std::time::Duration>,
    /// Set when undoing a failed group failed too: every later group fails with it
    /// (the next open repairs the state on disk).
    broken: Option<String>,
    /// The write-ahead log, appended to and synced by the [`LogStage`]; the writer
    /// releases what commits no longer need and reads it back after a failure.
    wal: Arc<Mutex<Wal>>,
    /// LSN of the last log entry the index holds (committed).
    wal_committed: u64,
    /// LSN of the last log entry added to the index (committed or not): what the
    /// next commit names. Entries arrive in LSN order.
    applied: u64,
    /// [`WriterThread::broken`] as the log stage sees it.
    shared_broken: Broken,
    /// Test hook: after this many partition commits of a group, stop dead, the way
    /// a killed process would (no undo, nothing more committed).
    pub(crate) crash_after_part_commits: Option<usize>,
    crashed: bool,
    /// Test hook: the next group's commit fails after this many partition commits
    /// (once), the way a full disk would.
    pub(crate) fail_after_part_commits: Option<usize>,
    /// Test hook: [`crate::merge::MAX_DEFERRED_SEGMENTS`], lowered so that a test
    /// reaches the bound in a few commits.
    pub(crate) max_deferred_segments: usize,
    /// Test hook: [`SATURATED`]; 0 makes any load a burst, so that a test's few
    /// requests hold merges back.
    pub(crate) saturated_at: f64,
    /// Test hook: commits wait for this gate to open (a commit that takes as long
    /// as the test wants); `entered` is set while one waits.
    pub(crate) commit_gate: Option<Arc<CommitGate>>,
    /// [`crate::IndexerConfig::commit_interval`].
    pub(crate) commit_interval: std::time::Duration,
}

/// See [`WriterThread::commit_gate`].
#[derive(Default)]
pub(crate) struct CommitGate {
    pub open: std::sync::atomic::AtomicBool,
    pub entered: std::sync::atomic::AtomicBool,
}

impl WriterThread {
    /// Takes over the partitions, reads the checkpoint and undoes a group that was
    /// committed to only some of its partitions (see [`crate::partition`]).
    pub fn new(
        root: PathBuf,
        parts: Partitions,
        memory_bytes: usize,
        fields: Fields,
        tail: Arc<crate::tail::Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<WriterThread> {
        let mut payloads: BTreeMap<String, Payload> = BTreeMap::new();
        for part in parts.list() {
            let payload = Payload::parse(part.index.load_metas()?.payload.as_deref())?;
            payloads.insert(day_name(part.day), payload);
        }
        let last = payloads
            .values()
            .max_by_key(|p| p.epoch)
            .cloned()
            .unwrap_or_default();
        let wal_dir = root
            .parent()
            .map_or_else(|| root.join("wal"), |data| data.join("wal"));
        let complete = last
            .parts
            .iter()
            .all(|name| payloads.get(name).is_some_and(|p| p.epoch == last.epoch));
        // An incomplete last group is undone below: replay starts where it started.
        let wal_committed = if complete { last.wal } else { last.wal_before };
        let (wal, replay) = Wal::open(&wal_dir, wal_committed)?;
        let mut uids = UidSource::new();
        uids.at_least(payloads.values().map(|p| p.uid_next).max().unwrap_or(0));
        // Tantivy wants at least 15 MB per indexing thread; more threads than cores
        // only adds memory.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (memory_bytes / (32 << 20)).clamp(1, cores.min(4));
        let mut this = WriterThread {
            root,
            parts,
            writers: BTreeMap::new(),
            memory_bytes,
            threads,
            merge_gate: MergeGate::default(),
            merge_requested: false,
            duty: Duty::new(Instant::now()),
            // As after a burst: what a burst left before a restart merges once the
            // writer is idle or lightly loaded.
            saturated: true,
            merges_settling: false,
            fields,
            checkpoint: Checkpoint {
                offsets: last.offsets.clone(),
            },
            epoch: last.epoch,
            tail,
            metrics,
            uids,
            retention: None,
            broken: None,
            wal: Arc::new(Mutex::new(wal)),
            wal_committed,
            applied: wal_committed,
            shared_broken: Broken::default(),
            crash_after_part_commits: None,
            crashed: false,
            fail_after_part_commits: None,
            max_deferred_segments: crate::merge::MAX_DEFERRED_SEGMENTS,
            saturated_at: SATURATED,
            commit_gate: None,
            commit_interval: COMMIT_INTERVAL,
        };
        // Merges a burst left due before a restart start once the writer is idle.
        this.merge_gate.defer();
        if !complete {
            tracing::warn!(
                epoch = last.epoch,
                parts = ?last.parts,
                "the last group was committed to only some partitions; undoing it"
            );
            this.undo(&last)?;
        }
        // Whatever was answered from the log but not committed before a crash (or
        // was undone just above) is indexed again before any new request is taken.
        if !replay.is_empty() {
            let (first, last) = (replay[0].lsn, replay[replay.len() - 1].lsn);
            let added = this.apply_entries(replay)?;
            tracing::info!(
                from = first,
                to = last,
                records = added,
                "write-ahead log replayed"
            );
        }
        this.publish_wal_size();
        Ok(this)
    }

    /// The log stage to run in front of this writer: it admits against the
    /// checkpoint as opened (and replayed) and appends to the same log.
    pub fn stage(&self) -> LogStage {
        LogStage::new(
            self.checkpoint.clone(),
            self.wal.clone(),
            self.metrics.clone(),
            self.shared_broken.clone(),
        )
    }

    /// Locks the log; a poisoned lock (a panic while holding it) is an error.
    fn wal(&self) -> Result<std::sync::MutexGuard<'_, Wal>> {
        self.wal
            .lock()
            .map_err(|_| Error::Internal("write-ahead log lock poisoned".into()))
    }

    /// Refuses every later group (and, through the stage, every request) with
    /// `reason` until a restart repairs the state on disk.
    fn break_with(&mut self, reason: String) {
        let _ = self.shared_broken.set(reason.clone());
        self.broken = Some(reason);
    }

    /// The writer of a day's partition, opening (or creating) it. The current day
    /// (see [`WriterThread::current_day`]) gets the whole memory budget, other days
    /// (late records, backfills) a small one.
    fn writer_for(&mut self, day: NaiveDate) -> Result<&mut IndexWriter<TantivyDocument>> {
        if !self.writers.contains_key(&day) {
            let part = match self.parts.get(day) {
                Some(p) => p,
                None => {
                    let p = open_part(&self.root, day, &self.fields)?;
                    self.parts.insert(p.clone());
                    p
                }
            };
            let writer = if self.current_day() == Some(day) {
                part.index
                    .writer_with_num_threads(self.threads, self.memory_bytes)?
            } else {
                part.index
                    .writer_with_num_threads(1, self.memory_bytes.clamp(15 << 20, 32 << 20))?
            };
            writer.set_merge_policy(Box::new(DeferringMergePolicy::with_bound(
                self.merge_gate.clone(),
                self.max_deferred_segments,
            )));
            self.writers.insert(day, writer);
        }
        self.writers
            .get_mut(&day)
            .ok_or_else(|| Error::Internal("partition writer vanished".into()))
    }

    /// The newest day that is not in the future: where records normally arrive. (A
    /// record from a skewed clock may create a later partition; it must not take
    /// the memory budget from today's.)
    fn current_day(&self) -> Option<NaiveDate> {
        let today = day_of(&chrono::Utc::now());
        self.parts
            .list()
            .into_iter()
            .map(|p| p.day)
            .find(|d| *d <= today)
    }

    /// Commits `days` one after the other with `payload`, then reloads their readers.
    fn commit_payload(&mut self, days: &[NaiveDate], payload: &Payload) -> Result<()> {
        let json = payload.to_json();
        for (n, day) in days.iter().enumerate() {
            if self.crash_after_part_commits == Some(n) {
                self.crashed = true;
                return Err(Error::Internal("simulated crash".into()));
            }
            if self.fail_after_part_commits == Some(n) {
                self.fail_after_part_commits = None;
                return Err(Error::Index("simulated commit failure".into()));
            }
            if let Some(gate) = &self.commit_gate {
                use std::sync::atomic::Ordering::SeqCst;
                gate.entered.store(true, SeqCst);
                while !gate.open.load(SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            let writer = self.writer_for(*day)?;
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(&json);
            prepared.commit()?;
        }
        for day in days {
            if let Some(part) = self.parts.get(*day) {
                // The data is durable even if the reload fails; the next commit's
                // reload will make it visible.
                if let Err(e) = self.parts.reload(&part) {
                    tracing::warn!(error = %e, "reader reload after commit failed");
                }
            }
        }
        Ok(())
    }

    /// Undoes `group` in every partition it names that exists: uncommitted documents
    /// are dropped, committed ones (uid at or above its `uid_from`) deleted, and the
    /// result committed as a new epoch whose checkpoint is the group's `before`.
    fn undo(&mut self, group: &Payload) -> Result<()> {
        let days: Vec<NaiveDate> = group
            .parts
            .iter()
            .filter_map(|n| NaiveDate::parse_from_str(n, crate::partition::DAY_FORMAT).ok())
            .filter(|d| self.parts.get(*d).is_some())
            .collect();
        self.epoch = self.epoch.max(group.epoch) + 1;
        let payload = Payload {
            offsets: group.before.clone(),
            epoch: self.epoch,
            parts: days.iter().map(|d| day_name(*d)).collect(),
            uid_from: group.uid_from,
            before: group.before.clone(),
            uid_next: self.uids.peek(),
            wal: group.wal_before,
            wal_before: group.wal_before,
        };
        let uid_field = self.fields.uid;
        for day in &days {
            let writer = self.writer_for(*day)?;
            writer.rollback()?;
            let from = tantivy::Term::from_field_u64(uid_field, group.uid_from);
            writer.delete_query(Box::new(tantivy::query::RangeQuery::new(
                std::ops::Bound::Included(from),
                std::ops::Bound::Unbounded,
            )))?;
        }
        self.commit_payload(&days, &payload)?;
        self.checkpoint = Checkpoint {
            offsets: group.before.clone(),
        };
        self.wal_committed = group.wal_before;
        tracing::info!(epoch = self.epoch, parts = ?payload.parts, "group undone");
        Ok(())
    }

    /// Drops every partition whose whole day is older than the retention, except
    /// the newest (it carries the checkpoint), after committing the checkpoint into
    /// the newest partition. Space returns at once: the directory is removed (after
    /// its writer is closed and it left the list searches take their searchers
    /// from; a search still running keeps its memory maps, which Unix keeps valid).
    fn enforce_retention(&mut self) {
        let Some(keep) = self.retention else { return };
        let Ok(keep) = chrono::Duration::from_std(keep) else {
            return;
        };
        let cutoff = chrono::Utc::now() - keep;
        let list = self.parts.list();
        let Some(newest) = list.first().map(|p| p.day) else {
            return;
        };
        let expired: Vec<Part> = list
            .into_iter()
            .skip(1)
            .filter(|p| {
                let end = (p.day + chrono::Days::new(1))
                    .and_time(chrono::NaiveTime::MIN)
                    .and_utc();
                end <= cutoff
            })
            .collect();
        if expired.is_empty() {
            return;
        }
        self.epoch += 1;
        let payload = Payload {
            offsets: self.checkpoint.offsets.clone(),
            epoch: self.epoch,
            parts: vec![day_name(newest)],
            uid_from: self.uids.peek(),
            before: self.checkpoint.offsets.clone(),
            uid_next: self.uids.peek(),
            wal: self.wal_committed,
            wal_before: self.wal_committed,
        };
        if let Err(e) = self.commit_payload(&[newest], &payload) {
            tracing::error!(error = %e, "retention: checkpoint commit failed, will retry");
            return;
        }
        for part in expired {
            let day = part.day;
            if let Some(writer) = self.writers.remove(&day) {
                if let Err(e) = writer.wait_merging_threads() {
                    tracing::warn!(error = %e, "retention: closing a writer failed");
                }
            }
            self.parts.remove(day);
            let Part { dir, .. } = part;
            match remove_dir(&self.root, day, &dir) {
                Ok(()) => {
                    tracing::info!(day = %day_name(day), cutoff = %cutoff.to_rfc3339(), "retention dropped a partition")
                }
                Err(e) => tracing::error!(error = %e, "retention: removing a partition failed"),
            }
        }
    }

    /// Opens the merge gate and has Tantivy start what its log merge policy would
    /// merge in every partition that has something due, opening its writer if need be.
    /// Does nothing when merges were not held back.
    ///
    /// Tantivy asks its policy only after a commit or a merge, so this commits: an
    /// empty commit carrying the partition's payload unchanged (the writer is idle:
    /// nothing is pending). Starting the candidates by hand (`IndexWriter::merge`)
    /// merged segments that a merge started at the bound was already merging: both
    /// ran to the end and one result was thrown away ("couldn't find segment in
    /// SegmentManager"), 90 segments merged twice in a 10M-record ingest. Asked
    /// after a commit, the policy only sees segments no merge holds.
    fn merge_now(&mut self) {
        if !self.merge_gate.open() || self.broken.is_some() || self.crashed {
            return;
        }
        for part in self.parts.list() {
            let day = part.day;
            let metas = match part.index.load_metas() {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(day = %day_name(day), error = %e, "cannot list segments to merge");
                    continue;
                }
            };
            if !merges_due(&metas.segments) {
                continue;
            }
            let asked = self.writer_for(day).and_then(|writer| {
                let mut prepared = writer.prepare_commit()?;
                if let Some(payload) = &metas.payload {
                    prepared.set_payload(payload);
                }
                prepared.commit()?;
                Ok(())
            });
            match asked {
                Ok(()) => {
                    tracing::debug!(day = %day_name(day), "merges due started");
                    self.merges_settling = true;
                }
                Err(e) => {
                    tracing::warn!(day = %day_name(day), error = %e, "cannot start the merges due")
                }
            }
        }
    }

    /// Reloads the reader of every open partition whose segments changed (merges
    /// finished); returns whether merges are still due or running.
    fn reload_merged(&mut self) -> bool {
        let mut due = false;
        for day in self.writers.keys() {
            let Some(part) = self.parts.get(*day) else {
                continue;
            };
            let Ok(metas) = part.index.searchable_segment_metas() else {
                continue;
            };
            let on_disk: BTreeSet<_> = metas.iter().map(|m| m.id()).collect();
            let searched: BTreeSet<_> = part
                .reader
                .searcher()
                .segment_readers()
                .iter()
                .map(|r| r.segment_id())
                .collect();
            if on_disk != searched {
                if let Err(e) = self.parts.reload(&part) {
                    tracing::warn!(error = %e, "reader reload after merges failed");
                }
            }
            due |= merges_due(&metas);
        }
        due
    }

    /// Runs until a shutdown message arrives or every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Staged>) {
        tracing::info!(
            sources = self.checkpoint.offsets.len(),
            "index writer started"
        );
        // Only for the timer that bounds how long a group keeps collecting.
        let timer = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the writer's timer; writer stopped");
                return;
            }
        };
        let mut stop_replies = Vec::new();
        // "Long ago", where the platform's clock can say it: the first group commits at once.
        let mut last_commit = Instant::now()
            .checked_sub(self.commit_interval)
            .unwrap_or_else(Instant::now);
        self.enforce_retention();
        let mut last_retention = Instant::now();
        loop {
            let pending = self.merge_gate.deferring() || self.merges_settling;
            self.metrics
                .merges_pending
                .store(u64::from(pending), std::sync::atomic::Ordering::Relaxed);
            // Wake up without a request to start held-back merges once idle, and
            // (with a retention) at least every RETENTION_CHECK to apply it.
            let idle_wait = pending.then_some(MERGE_WHEN_IDLE);
            let retention_wait = self.retention.is_some().then_some(RETENTION_CHECK);
            let waiting = Instant::now();
            let first = match idle_wait.into_iter().chain(retention_wait).min() {
                Some(wait) => {
                    match timer.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                        Ok(Some(m)) => Some(m),
                        Ok(None) => break,
                        Err(_) => None,
                    }
                }
                None => match rx.blocking_recv() {
                    Some(m) => Some(m),
                    None => break,
                },
            };
            self.duty.idle(waiting.elapsed());
            if self.retention.is_some() && last_retention.elapsed() >= RETENTION_CHECK {
                self.enforce_retention();
                last_retention = Instant::now();
            }
            let first = match first {
                None if self.merges_settling && !self.merge_gate.deferring() => {
                    self.merges_settling = self.reload_merged();
                    continue;
                }
                None | Some(Staged::MergeNow) => {
                    self.merge_now();
                    continue;
                }
                Some(m) => m,
            };
            if self.saturated {
                self.merge_gate.defer();
            }
            let deadline = last_commit + self.commit_interval;
            let (stops, committed) = self.commit_group(first, &mut rx, &timer, deadline);
            if self.crashed {
                // The test hook's crash: leave without committing or answering.
                return;
            }
            if committed {
                last_commit = Instant::now();
            }
            if let Some(busy) = self.duty.close(Instant::now()) {
                let was = std::mem::replace(&mut self.saturated, busy >= self.saturated_at);
                if was && !self.saturated {
                    tracing::debug!(busy, "writer no longer saturated; merges resume");
                    self.merge_requested = true;
                }
            }
            if std::mem::take(&mut self.merge_requested) {
                self.merge_now();
            } else if self.merges_settling && !self.merge_gate.deferring() {
                // A steady stream never leaves the writer the idle second that
                // checks whether the merges it asked for are done.
                self.merges_settling = self.reload_merged();
            }
            stop_replies.extend(stops);
            if !stop_replies.is_empty() {
                break;
            }
        }
        // Refuse (by dropping) whatever arrives from now on, then let merges finish
        // so the directory is left tidy and the lock released.
        drop(rx);
        for (_, writer) in std::mem::take(&mut self.writers) {
            if let Err(e) = writer.wait_merging_threads() {
                tracing::warn!(error = %e, "waiting for merges at shutdown failed");
            }
        }
        tracing::info!("index writer stopped");
        for reply in stop_replies {
            let _ = reply.send(());
        }
    }

    /// Adds `first` and whatever else arrives until `deadline` (at once when it has
    /// passed), commits them together, and returns the replies of any shutdown
    /// requests in the group and whether a commit happened.
    fn commit_group(
        &mut self,
        first: Staged,
        rx: &mut mpsc::Receiver<Staged>,
        timer: &tokio::runtime::Runtime,
        deadline: Instant,
    ) -> (Vec<oneshot::Sender<()>>, bool) {
        let before = self.checkpoint.clone();
        let wal_before = self.wal_committed;
        let mut waiting = Vec::new();
        let mut stops = Vec::new();
        let mut failure: Option<String> = None;
        let mut added = 0u64;
        // `_id`s added in this group, which the searcher cannot see yet.
        let mut pending_ids: std::collections::HashSet<String> = Default::default();
        let searcher = self.parts.searcher();
        let uid_from = self.uids.peek();
        let mut touched: BTreeSet<NaiveDate> = BTreeSet::new();
        if let Some(reason) = &self.broken {
            failure = Some(reason.clone());
        }
        let mut next = Some(first);
        loop {
            let msg = match next.take() {
                Some(m) => m,
                None => match rx.try_recv() {
                    Ok(m) => m,
                    Err(mpsc::error::TryRecvError::Empty)
                        if stops.is_empty() && failure.is_none() && Instant::now() < deadline =>
                    {
                        let wait =
                            async { tokio::time::timeout_at(deadline.into(), rx.recv()).await };
                        let waiting = Instant::now();
                        let got = timer.block_on(wait);
                        self.duty.idle(waiting.elapsed());
                        match got {
                            Ok(Some(m)) => m,
                            _ => break,
                        }
                    }
                    Err(_) => break,
                },
            };
            match msg {
                Staged::Shutdown { reply } => stops.push(reply),
                Staged::MergeNow => self.merge_requested = true,
                Staged::Nothing { reply, resp } => waiting.push(Waiting::Ingest(reply, resp)),
                Staged::Logged {
                    lsn,
                    records,
                    reply,
                } => {
                    if failure.is_none() {
                        for rec in records {
                            // Admitted by the stage already; the check matters when
                            // entries are applied again after a failed group.
                            if !self.checkpoint.admit(&rec.source, rec.offset) {
                                continue;
                            }
                            // A shard's stream position: it only moves the
                            // checkpoint, committed with the records before it.
                            if protocol::shard::is_position_source(&rec.source) {
                                continue;
                            }
                            if let Err(e) = self.add_record(&rec, &mut touched) {
                                failure = Some(e.to_string());
                                break;
                            }
                            added += 1;
                            // The tail sees records as soon as they are added,
                            // without waiting for the commit.
                            self.tail.offer(rec);
                        }
                    }
                    // Durable in the log: a failed group applies it again below.
                    self.applied = self.applied.max(lsn);
                    if let Some((reply, resp)) = reply {
                        waiting.push(Waiting::Ingest(reply, resp));
                    }
                }
                Staged::Bulk { docs, reply } => {
                    let mut outcomes = Vec::with_capacity(docs.len());
                    if failure.is_none() {
                        for BulkDoc { record, id, source } in docs {
                            if let Some(id) = &id {
                                let term = tantivy::Term::from_field_text(self.fields.es_id, id);
                                let seen = pending_ids.contains(id)
                                    || searcher.doc_freq(&term).is_ok_and(|n| n > 0);
                                if seen {
                                    outcomes.push(BulkOutcome::Duplicate);
                                    continue;
                                }
                                pending_ids.insert(id.clone());
                            }
                            let doc = self.fields.to_document_with_id(
                                &record,
                                self.uids.next(),
                                id.as_deref(),
                                source.as_ref(),
                            );
                            let day = day_of(&record.ts);
                            touched.insert(day);
                            let result = self
                                .writer_for(day)
                                .and_then(|w| w.add_document(doc).map_err(Error::from));
                            if let Err(e) = result {
                                failure = Some(e.to_string());
                                break;
                            }
                            outcomes.push(BulkOutcome::Created);
                            added += 1;
                            self.tail.offer(record);
                        }
                    }
                    waiting.push(Waiting::Bulk(reply, outcomes));
                }
            }
        }
        let committed = failure.is_none() && added > 0;
        if committed {
            let started = Instant::now();
            let days: Vec<NaiveDate> = touched.iter().copied().collect();
            self.epoch += 1;
            let payload = Payload {
                offsets: self.checkpoint.offsets.clone(),
                epoch: self.epoch,
                parts: days.iter().map(|d| day_name(*d)).collect(),
                uid_from,
                before: before.offsets.clone(),
                uid_next: self.uids.peek(),
                wal: self.applied,
                wal_before,
            };
            match self.commit_payload(&days, &payload) {
                Ok(()) => {
                    self.wal_committed = payload.wal;
                    // An undo of this group on the next open replays from
                    // `wal_before`: only what is below it can go.
                    if let Err(e) = self.wal().and_then(|mut w| w.release_through(wal_before)) {
                        tracing::warn!(error = %e, "cannot release write-ahead log segments");
                    }
                    self.publish_wal_size();
                    Metrics::inc(&self.metrics.commits, 1);
                    self.metrics.commit_seconds.observe(started.elapsed());
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
        if self.crashed {
            return (stops, false);
        }
        // Writers of days this group did not touch are closed (their memory freed),
        // except the current day's and those with merges due or running: closing a
        // writer abandons its running merges (Tantivy throws their result away), so
        // an older day's merges started when the writer went idle never finished
        // under a steady stream of today's records.
        let current = self.current_day();
        let parts = &self.parts;
        self.writers.retain(|day, _| {
            touched.contains(day) || Some(*day) == current || day_merges_due(parts, *day)
        });
        match failure {
            None => {
                for w in waiting {
                    match w {
                        Waiting::Ingest(reply, resp) => {
                            Metrics::inc(&self.metrics.records_accepted, resp.accepted);
                            Metrics::inc(&self.metrics.records_duplicate, resp.duplicates);
                            let _ = reply.send(Ok(resp));
                        }
                        Waiting::Bulk(reply, outcomes) => {
                            let created = outcomes
                                .iter()
                                .filter(|o| **o == BulkOutcome::Created)
                                .count() as u64;
                            Metrics::inc(&self.metrics.records_accepted, created);
                            Metrics::inc(
                                &self.metrics.records_duplicate,
                                outcomes.len() as u64 - created,
                            );
                            let _ = reply.send(Ok(outcomes));
                        }
                    }
                }
            }
            Some(reason) => {
                Metrics::inc(&self.metrics.commit_errors, 1);
                tracing::error!(error = %reason, requests = waiting.len(), "commit failed, rolling back the group");
                let group = Payload {
                    offsets: self.checkpoint.offsets.clone(),
                    epoch: self.epoch,
                    parts: touched.iter().map(|d| day_name(*d)).collect(),
                    uid_from,
                    before: before.offsets.clone(),
                    uid_next: self.uids.peek(),
                    wal: self.applied,
                    wal_before,
                };
                if let Err(e) = self.undo(&group) {
                    tracing::error!(error = %e, "undoing the failed group failed; refusing ingest until restart");
                    self.break_with(format!(
                        "an earlier commit failed and could not be undone ({e}); restart the indexer"
                    ));
                }
                self.checkpoint = before;
                let err = || {
                    Error::Index(format!(
                        "commit failed ({reason}); the batch was not acknowledged, and the recovery may still index part or all of it: retry it, a retry is deduplicated"
                    ))
                };
                for w in waiting {
                    match w {
                        Waiting::Ingest(reply, _) => {
                            let _ = reply.send(Err(err()));
                        }
                        Waiting::Bulk(reply, _) => {
                            let _ = reply.send(Err(err()));
                        }
                    }
                }
                // Requests already answered from the log cannot be failed: every
                // entry the group applied is indexed again now (as at an open after
                // a crash). Those of `wait_for` requests answered with the error
                // above are too, which the error says; a retry is a duplicate.
                let through = self.applied;
                if self.broken.is_none() && through > self.wal_committed {
                    let replayed = self
                        .wal()
                        .and_then(|w| w.read_after(self.wal_committed))
                        .map(|mut entries| {
                            entries.retain(|e| e.lsn <= through);
                            entries
                        })
                        .and_then(|entries| self.apply_entries(entries));
                    if let Err(e) = replayed {
                        tracing::error!(error = %e, "re-applying acknowledged log entries failed; refusing ingest until restart");
                        self.break_with(format!(
                            "acknowledged records could not be indexed ({e}); restart the indexer, which replays them"
                        ));
                    }
                }
            }
        }
        (stops, committed)
    }

    /// Indexes log entries again (admitted by source and offset as live ingest
    /// would, without offering them to the live tail) and commits them; returns the
    /// records added.
    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<u64> {
        let Some(last) = entries.last().map(|e| e.lsn) else {
            return Ok(0);
        };
        let before = self.checkpoint.clone();
        let uid_from = self.uids.peek();
        let wal_before = self.wal_committed;
        let mut touched: BTreeSet<NaiveDate> = BTreeSet::new();
        let mut added = 0u64;
        for entry in entries {
            let records = match crate::inflate::decompress_for_replay(&entry.body, REPLAY_MAX_BYTES)
                .and_then(|ndjson| Ok(protocol::decode_ndjson(&ndjson)?))
            {
                Ok(r) => r,
                Err(e) => {
                    // It was decoded once before it was logged; a body that no
                    // longer decodes is damage the CRC did not catch. Skipping it
                    // beats refusing to start.
                    tracing::error!(lsn = entry.lsn, error = %e, "unreadable write-ahead log entry skipped");
                    continue;
                }
            };
            for rec in records {
                if !self.checkpoint.admit(&rec.source, rec.offset) {
                    continue;
                }
                if protocol::shard::is_position_source(&rec.source) {
                    continue;
                }
                self.add_record(&rec, &mut touched)?;
                added += 1;
            }
        }
        let days: Vec<NaiveDate> = touched.into_iter().collect();
        if !days.is_empty() {
            self.epoch += 1;
            let payload = Payload {
                offsets: self.checkpoint.offsets.clone(),
                epoch: self.epoch,
                parts: days.iter().map(|d| day_name(*d)).collect(),
                uid_from,
                before: before.offsets.clone(),
                uid_next: self.uids.peek(),
                wal: last,
                wal_before,
            };
            if let Err(e) = self.commit_payload(&days, &payload) {
                self.checkpoint = before;
                return Err(e);
            }
            self.wal_committed = last;
        }
        self.applied = self.applied.max(last);
        Ok(added)
    }

    /// Adds an admitted record to its day's partition, noting the day.
    fn add_record(&mut self, rec: &LogRecord, touched: &mut BTreeSet<NaiveDate>) -> Result<()> {
        let doc = self.fields.to_document(rec, self.uids.next());
        let day = day_of(&rec.ts);
        touched.insert(day);
        self.writer_for(day)?.add_document(doc)?;
        Ok(())
    }

    fn publish_wal_size(&self) {
        self.metrics.wal_bytes.store(
            self.wal().map_or(0, |w| w.bytes()),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// Tie-breakers: a counter seeded with the time in microseconds times 1024, so that
/// ids increase in insertion order (a segment's column of them bit-packs to almost
/// nothing, where random ids cost 8 bytes a record) and a restarted writer starts
/// above everything an earlier one could have issued unless it indexed more than
/// 1024 records per microsecond of its life.
struct UidSource {
    next: u64,
}

impl UidSource {
    fn new() -> UidSource {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        UidSource {
            next: micros.saturating_mul(1024),
        }
    }

    /// The next uid to be issued.
    fn peek(&self) -> u64 {
        self.next.wrapping_add(1)
    }

    /// Issues nothing below `floor` from now on.
    fn at_least(&mut self, floor: u64) {
        self.next = self.next.max(floor);
    }

    fn next(&mut self) -> u64 {
        self.next = self.next.wrapping_add(1);
        self.next
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
