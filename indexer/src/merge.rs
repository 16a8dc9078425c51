//! When a partition's segments are merged: not while records are pouring in.
//!
//! Every group commit leaves a segment per indexing thread, and merging them costs
//! about a third of what indexing the records did (measured: ~17 CPU seconds for 2M
//! records merged once, against ~48 to index them), on the same two cores the
//! ingest needs. So, like Elasticsearch's merge throttling, merges give way to ingest:
//! while the writer works flat out (busy [`SATURATED`] of the last [`DUTY_WINDOW`] or
//! more, see [`Duty`]) a partition's segments pile up unmerged, up to
//! [`MAX_DEFERRED_SEGMENTS`]; past that bound, under a lighter load (a cluster's steady
//! stream of logs), or once the writer has been idle for [`MERGE_WHEN_IDLE`], Tantivy's
//! log merge policy decides as usual. The trade-off: during a burst a search visits
//! up to that many small segments (a few ms more per query) and the index is a few
//! percent bigger until the merges catch up; the merge work itself is the same, only
//! moved out of the burst.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tantivy::index::SegmentMeta;
use tantivy::merge_policy::{LogMergePolicy, MergeCandidate, MergePolicy};

/// Unmerged segments a partition may gather while the writer is busy. At ~20k
/// records per segment (a group commit of 40k records on two threads) a search pays
/// well under 0.1 ms per segment, so the bound keeps searches within a few ms of
/// their merged speed.
pub const MAX_DEFERRED_SEGMENTS: usize = 128;

/// How long the writer must have had nothing to do before deferred merges start.
pub const MERGE_WHEN_IDLE: Duration = Duration::from_secs(1);

/// Share of its time the writer must have been working, rather than waiting for
/// requests, for merges to be held back. A burst keeps it near 1 (there is always a
/// request queued); a steady 10k records/s keeps it near 0.1.
pub const SATURATED: f64 = 0.5;

/// The stretch of the writer's time [`Duty`] measures at once.
pub const DUTY_WINDOW: Duration = Duration::from_secs(2);

/// How busy the writer has been: the share of the last [`DUTY_WINDOW`] it did not
/// spend waiting for requests.
#[derive(Debug)]
pub struct Duty {
    started: Instant,
    idle: Duration,
}

impl Duty {
    pub fn new(now: Instant) -> Duty {
        Duty {
            started: now,
            idle: Duration::ZERO,
        }
    }

    /// The writer waited this long for a request.
    pub fn idle(&mut self, waited: Duration) {
        self.idle += waited;
    }

    /// The busy share of the window once it has lasted [`DUTY_WINDOW`] (the next one
    /// starts then), `None` before. A wait across the end of a window counts in the
    /// window it ends in.
    pub fn close(&mut self, now: Instant) -> Option<f64> {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < DUTY_WINDOW {
            return None;
        }
        let idle = (self.idle.as_secs_f64() / elapsed.as_secs_f64()).min(1.0);
        *self = Duty::new(now);
        Some(1.0 - idle)
    }
}

/// Whether merges are being held back; shared by the writer thread (which opens
/// and closes it) and the merge policy of every partition it writes.
#[derive(Debug, Clone, Default)]
pub struct MergeGate(Arc<AtomicBool>);

impl MergeGate {
    /// Holds merges back (the writer is busy).
    pub fn defer(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Lets merges run; returns whether they were being held back.
    pub fn open(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }

    pub fn deferring(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Tantivy's log merge policy behind a [`MergeGate`].
#[derive(Debug)]
pub struct DeferringMergePolicy {
    gate: MergeGate,
    /// [`MAX_DEFERRED_SEGMENTS`] but in tests.
    max_deferred: usize,
    inner: LogMergePolicy,
}

impl DeferringMergePolicy {
    pub fn new(gate: MergeGate) -> DeferringMergePolicy {
        Self::with_bound(gate, MAX_DEFERRED_SEGMENTS)
    }

    /// Defers until `max_deferred` segments instead of [`MAX_DEFERRED_SEGMENTS`].
    pub fn with_bound(gate: MergeGate, max_deferred: usize) -> DeferringMergePolicy {
        DeferringMergePolicy {
            gate,
            max_deferred,
            inner: LogMergePolicy::default(),
        }
    }
}

impl MergePolicy for DeferringMergePolicy {
    /// `segments` are those not already being merged.
    fn compute_merge_candidates(&self, segments: &[SegmentMeta]) -> Vec<MergeCandidate> {
        if self.gate.deferring() && segments.len() < self.max_deferred {
            return Vec::new();
        }
        self.inner.compute_merge_candidates(segments)
    }
}

/// What Tantivy's policy would merge among `segments` with the gate open.
pub fn candidates(segments: &[SegmentMeta]) -> Vec<MergeCandidate> {
    LogMergePolicy::default().compute_merge_candidates(segments)
}

/// Whether a partition with these segments has merges due or running (a running
/// merge's segments stay listed until it ends). The writer then makes Tantivy ask
/// its policy, which leaves out segments already being merged.
pub fn merges_due(segments: &[SegmentMeta]) -> bool {
    !candidates(segments).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::index::SegmentId;

    fn segments(n: usize, docs: u32) -> Vec<SegmentMeta> {
        let index = tantivy::Index::create_in_ram(tantivy::schema::Schema::builder().build());
        (0..n)
            .map(|_| index.new_segment_meta(SegmentId::generate_random(), docs))
            .collect()
    }

    #[test]
    fn a_busy_writer_defers_merges_up_to_the_bound() {
        let gate = MergeGate::default();
        let policy = DeferringMergePolicy::new(gate.clone());
        let below = segments(MAX_DEFERRED_SEGMENTS - 1, 20_000);
        // The log policy would merge these (one level, far more than 8 segments).
        assert!(!candidates(&below).is_empty());
        assert!(!policy.compute_merge_candidates(&below).is_empty());
        gate.defer();
        assert!(policy.compute_merge_candidates(&below).is_empty());
        let at_bound = segments(MAX_DEFERRED_SEGMENTS, 20_000);
        let merged: usize = policy
            .compute_merge_candidates(&at_bound)
            .iter()
            .map(|c| c.0.len())
            .sum();
        assert_eq!(merged, MAX_DEFERRED_SEGMENTS, "the bound merges as usual");
        assert!(gate.open(), "it was deferring");
        assert!(!gate.open(), "and now it is not");
        assert!(!policy.compute_merge_candidates(&below).is_empty());
    }

    #[test]
    fn duty_is_the_busy_share_of_each_whole_window() {
        let t0 = Instant::now();
        let mut duty = Duty::new(t0);
        duty.idle(Duration::from_millis(300));
        assert_eq!(
            duty.close(t0 + DUTY_WINDOW / 2),
            None,
            "not a whole window yet"
        );
        duty.idle(Duration::from_millis(200));
        let busy = duty.close(t0 + DUTY_WINDOW).unwrap();
        assert!((busy - 0.75).abs() < 1e-9, "{busy}");
        // The next window starts empty; a wait longer than it counts as all idle.
        duty.idle(DUTY_WINDOW * 3);
        assert_eq!(duty.close(t0 + DUTY_WINDOW * 2), Some(0.0));
        assert_eq!(
            duty.close(t0 + DUTY_WINDOW * 4),
            Some(1.0),
            "no wait: all busy"
        );
    }

    #[test]
    fn an_open_gate_is_the_log_merge_policy() {
        let policy = DeferringMergePolicy::new(MergeGate::default());
        for (n, docs) in [(3, 20_000), (8, 20_000), (12, 500), (1, 5_000_000)] {
            let s = segments(n, docs);
            let ids = |c: Vec<MergeCandidate>| -> Vec<Vec<SegmentId>> {
                c.into_iter().map(|c| c.0).collect()
            };
            assert_eq!(
                ids(policy.compute_merge_candidates(&s)),
                ids(candidates(&s)),
                "{n} segments of {docs}"
            );
        }
    }
}
