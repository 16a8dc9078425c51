//! The log stage: the thread in front of the index writer that admits ingest
//! requests, appends them to the write-ahead log, fsyncs once per group and answers
//! `refresh=false` requests, then hands the admitted records to the writer in log
//! order.
//!
//! It exists because the writer thread spends a good part of a busy second inside
//! Tantivy commits, and while the writer logged and answered requests itself no
//! shipper heard back during a commit: every agent (one batch in flight each) waited,
//! and the cores idled (issue 14's profile: 7 % idle at full load). Here requests are
//! answered as soon as they are durable, whatever the writer is doing; the writer
//! catches up from its queue once its commit ends.
//!
//! Exactly-once is kept by three rules. The stage admits by (source, offset) against
//! its own copy of the checkpoint (what is logged, which runs ahead of what is
//! committed) and forwards only after the fsync, so every entry the writer applies is
//! durable. The writer applies entries in LSN order and each commit names the last
//! LSN it holds, so a replay at open starts exactly after it. A failed append or
//! fsync takes back the group's offsets and unsynced entries, so nothing answered
//! with an error is replayed.
//!
//! The trade-off: records of answered requests wait in a bounded queue
//! ([`STAGED_DEPTH`]) outside the per-request memory budget, and a `wait_for`
//! request costs an fsync it did not need before (it is logged the same way, so that
//! the log keeps admission order).

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::wal::Wal;
use crate::writer::{log_body, Ack, BulkDoc, BulkOutcome, Checkpoint, WriterMsg};
use protocol::{IngestResponse, LogRecord};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// Requests logged and waiting for the writer. While the writer commits they queue
/// here; a full queue stops the stage, and so the shippers (back-pressure).
pub const STAGED_DEPTH: usize = 16;

/// Most requests logged with one fsync.
const GROUP_MAX: usize = 64;

/// What the stage hands the writer, in log order.
pub enum Staged {
    /// Admitted records of the log entry `lsn` (durable). `reply` is owed once they
    /// are committed (`refresh=wait_for`); a `refresh=false` request was answered.
    Logged {
        lsn: u64,
        records: Vec<LogRecord>,
        reply: Option<(oneshot::Sender<Result<IngestResponse>>, IngestResponse)>,
    },
    /// A `wait_for` request with nothing new in it: answered at the next commit, so
    /// that the records it repeats are searchable when it is answered.
    Nothing {
        reply: oneshot::Sender<Result<IngestResponse>>,
        resp: IngestResponse,
    },
    Bulk {
        docs: Vec<BulkDoc>,
        reply: oneshot::Sender<Result<Vec<BulkOutcome>>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    MergeNow,
}

/// Set once by the writer when a failed group could not be undone; the stage then
/// refuses every request with it, as the writer does.
pub type Broken = Arc<OnceLock<String>>;

pub struct LogStage {
    /// Highest offset logged per source (the writer's checkpoint, then ahead of it).
    logged: Checkpoint,
    wal: Arc<Mutex<Wal>>,
    metrics: Arc<Metrics>,
    broken: Broken,
}

/// A request of the group at hand, after admission and append.
enum Pending {
    Logged {
        lsn: u64,
        records: Vec<LogRecord>,
        reply: oneshot::Sender<Result<IngestResponse>>,
        resp: IngestResponse,
        early: bool,
        /// Offsets this request raised, with what they were before (taken back if
        /// the group's fsync fails).
        raised: Vec<(String, Option<u64>)>,
    },
    Forward(Staged),
}

impl LogStage {
    pub fn new(
        logged: Checkpoint,
        wal: Arc<Mutex<Wal>>,
        metrics: Arc<Metrics>,
        broken: Broken,
    ) -> LogStage {
        LogStage {
            logged,
            wal,
            metrics,
            broken,
        }
    }

    /// Runs until the request channel closes or a shutdown has been passed on.
    pub fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>, tx: mpsc::Sender<Staged>) {
        let mut stopping = false;
        while !stopping {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut group = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                if matches!(msg, WriterMsg::Shutdown { .. }) {
                    stopping = true;
                }
                if let Some(p) = self.admit(msg) {
                    group.push(p);
                }
                if stopping || group.len() >= GROUP_MAX {
                    break;
                }
                next = rx.try_recv().ok();
            }
            for staged in self.settle(group) {
                if tx.blocking_send(staged).is_err() {
                    // The writer is gone (a crash hook or a panic): requests still
                    // queued are dropped, which their callers see as a shutdown.
                    return;
                }
            }
        }
    }

    /// Admits one request and appends what is new to the log (not yet synced).
    /// Returns `None` when it was answered at once.
    fn admit(&mut self, msg: WriterMsg) -> Option<Pending> {
        let (records, ack, reply) = match msg {
            WriterMsg::Ingest {
                records,
                ack,
                reply,
            } => (records, ack, reply),
            WriterMsg::Bulk { docs, reply } => {
                return Some(Pending::Forward(Staged::Bulk { docs, reply }))
            }
            WriterMsg::Shutdown { reply } => {
                return Some(Pending::Forward(Staged::Shutdown { reply }))
            }
            WriterMsg::MergeNow => return Some(Pending::Forward(Staged::MergeNow)),
        };
        if let Some(reason) = self.broken.get() {
            let _ = reply.send(Err(Error::Index(reason.clone())));
            return None;
        }
        let mut resp = IngestResponse::default();
        let mut raised = Vec::new();
        // Filtered in place: no second vector, no record moved when none repeats.
        let mut admitted = records;
        admitted.retain(|rec| {
            let before = self.logged.offsets.get(&rec.source).copied();
            if !self.logged.admit(&rec.source, rec.offset) {
                resp.duplicates += 1;
                return false;
            }
            // A request holds few sources: one entry each, with its first value.
            if !raised.iter().any(|(s, _)| *s == rec.source) {
                raised.push((rec.source.clone(), before));
            }
            true
        });
        resp.accepted = admitted.len() as u64;
        let early = matches!(ack, Ack::Logged(_));
        if admitted.is_empty() {
            if early {
                self.answered(&resp);
                let _ = reply.send(Ok(resp));
                return None;
            }
            return Some(Pending::Forward(Staged::Nothing { reply, resp }));
        }
        // Only a request with something new is logged: a replay of it admits the
        // same records, since the ones it repeats were logged earlier.
        let body = match ack {
            Ack::Logged(body) | Ack::Committed(Some(body)) => body,
            Ack::Committed(None) => log_body(&admitted),
        };
        let appended = self
            .wal
            .lock()
            .map_err(|_| Error::Internal("write-ahead log lock poisoned".into()))
            .and_then(|mut wal| wal.append(&body));
        match appended {
            Ok(lsn) => Some(Pending::Logged {
                lsn,
                records: admitted,
                reply,
                resp,
                early,
                raised,
            }),
            Err(e) => {
                self.take_back(raised);
                let _ = reply.send(Err(e));
                None
            }
        }
    }

    /// Makes the group's entries durable with one fsync, answers the early requests
    /// and returns what the writer is owed, in log order. A failed fsync fails every
    /// logged request of the group and forgets its entries.
    fn settle(&mut self, group: Vec<Pending>) -> Vec<Staged> {
        let any_logged = group.iter().any(|p| matches!(p, Pending::Logged { .. }));
        let synced = if any_logged {
            self.wal
                .lock()
                .map_err(|_| Error::Internal("write-ahead log lock poisoned".into()))
                .and_then(|mut wal| {
                    let synced = wal.sync();
                    if synced.is_err() {
                        if let Err(e) = wal.discard_unsynced() {
                            tracing::error!(error = %e, "cannot discard the log entries of a failed fsync");
                        }
                    }
                    synced
                })
                .map(|_| ())
        } else {
            Ok(())
        };
        let mut out = Vec::with_capacity(group.len());
        for p in group.into_iter().rev() {
            match p {
                Pending::Forward(s) => out.push(s),
                Pending::Logged {
                    lsn,
                    records,
                    reply,
                    resp,
                    early,
                    raised,
                } => match &synced {
                    Err(e) => {
                        // Back to front, so each source ends at its value before
                        // the group.
                        self.take_back(raised);
                        let _ = reply.send(Err(Error::Index(format!(
                            "cannot make the write-ahead log durable: {e}"
                        ))));
                    }
                    Ok(()) if early => {
                        self.answered(&resp);
                        Metrics::inc(&self.metrics.records_logged, resp.accepted);
                        let _ = reply.send(Ok(resp));
                        out.push(Staged::Logged {
                            lsn,
                            records,
                            reply: None,
                        });
                    }
                    Ok(()) => out.push(Staged::Logged {
                        lsn,
                        records,
                        reply: Some((reply, resp)),
                    }),
                },
            }
        }
        out.reverse();
        out
    }

    fn answered(&self, resp: &IngestResponse) {
        Metrics::inc(&self.metrics.records_accepted, resp.accepted);
        Metrics::inc(&self.metrics.records_duplicate, resp.duplicates);
    }

    /// Restores the offsets one request raised.
    fn take_back(&mut self, raised: Vec<(String, Option<u64>)>) {
        for (source, before) in raised {
            match before {
                Some(o) => {
                    self.logged.offsets.insert(source, o);
                }
                None => {
                    self.logged.offsets.remove(&source);
                }
            }
        }
    }
}
