//! The `ts` and `_uid` columns of every segment, opened once and shared by searches.
//!
//! Opening a fast column is not free: Tantivy's blockwise-linear codec, which `ts`
//! and `_uid` get, decodes the header of every 512-document block into memory when
//! the column is opened (~4k blocks for a 2M-record segment), and a search opened
//! `ts` three times per segment (is the segment in range, the range itself, the
//! newest-first collector) and `_uid` once. Profiled on 10M records, that was three
//! quarters of a trace id lookup's CPU. Segments never change (deletes only mark
//! documents), so a segment's columns are opened on first use and kept by its
//! `SegmentId` until no partition searches that segment any more. The trade-off:
//! the decoded block headers stay in memory (~150 KiB per column of 2M records),
//! and a merged-away segment's files stay mapped until the next reader reload drops
//! it from the cache.

use crate::schema::{TS, UID};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tantivy::columnar::Column;
use tantivy::index::SegmentId;
use tantivy::{DocId, SegmentReader};

/// The columns of one segment every time-ordered search reads.
pub struct SegmentColumns {
    pub ts: Column<tantivy::DateTime>,
    pub uid: Column<u64>,
}

impl SegmentColumns {
    /// Smallest and largest `ts` (micros) of the segment; `None` when it is empty.
    pub fn ts_bounds(&self) -> Option<(i64, i64)> {
        (self.ts.values.num_vals() > 0).then(|| {
            (
                self.ts.min_value().into_timestamp_micros(),
                self.ts.max_value().into_timestamp_micros(),
            )
        })
    }
}

/// Cheap to clone: every clone shares one map.
#[derive(Clone, Default)]
pub struct ColumnCache {
    inner: Arc<Mutex<Cached>>,
}

#[derive(Default)]
struct Cached {
    by_segment: HashMap<SegmentId, Arc<SegmentColumns>>,
    /// The segments searched as of the last [`ColumnCache::retain`]; `None` before
    /// the first. Only these are cached: a search still running on a searcher from
    /// before a reload must not put a merged-away segment back (its files would stay
    /// mapped until the next reload, which an idle indexer may never do).
    live: Option<HashSet<SegmentId>>,
}

impl std::fmt::Debug for ColumnCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnCache")
            .field("segments", &self.len())
            .finish()
    }
}

impl ColumnCache {
    /// The columns of `segment`, opened now if no search opened them before.
    pub fn get(&self, segment: &SegmentReader) -> tantivy::Result<Arc<SegmentColumns>> {
        let id = segment.segment_id();
        if let Some(cols) = self.lock().by_segment.get(&id) {
            return Ok(cols.clone());
        }
        // Opened outside the lock: two searches missing together both open it, and
        // the second insert replaces an equal value.
        let ff = segment.fast_fields();
        let cols = Arc::new(SegmentColumns {
            ts: ff.date(TS)?,
            uid: ff.u64(UID)?,
        });
        let mut cached = self.lock();
        if cached.live.as_ref().is_none_or(|live| live.contains(&id)) {
            cached.by_segment.insert(id, cols.clone());
        }
        Ok(cols)
    }

    /// The segments searched from now on: every other one is forgotten, and not
    /// cached again.
    pub fn retain(&self, live: HashSet<SegmentId>) {
        let mut cached = self.lock();
        cached.by_segment.retain(|id, _| live.contains(id));
        cached.live = Some(live);
    }

    pub fn len(&self) -> usize {
        self.lock().by_segment.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        // The map holds no invariant a panicking holder could break.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `ts` of a block of documents into `buf` (resized to `docs`): decoding the column
/// a block at a time instead of per document is most of a match-all aggregation's
/// time. `buf` is reused from block to block.
pub fn ts_block(
    ts: &Column<tantivy::DateTime>,
    docs: &[DocId],
    buf: &mut Vec<Option<tantivy::DateTime>>,
) {
    buf.clear();
    buf.resize(docs.len(), None);
    ts.first_vals(docs, buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_opened_once_per_segment_and_forgotten_with_it() {
        // Two records: 00:00:00 with uid 0 and 00:07:39 with uid 104729.
        let (index, _) = crate::search::tests::index_of(&[2]);
        let searcher = index.reader().unwrap().searcher();
        let segment = &searcher.segment_readers()[0];

        let cache = ColumnCache::default();
        let first = cache.get(segment).unwrap();
        let again = cache.get(segment).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the second search reopened it");
        let base = 1_795_305_600_000_000; // 2026-11-22T00:00:00Z
        assert_eq!(first.ts_bounds(), Some((base, base + 459_000_000)));
        assert_eq!(first.uid.first(1), Some(104_729));

        cache.retain(HashSet::from([segment.segment_id()]));
        assert_eq!(cache.len(), 1);
        cache.retain(HashSet::new());
        assert!(cache.is_empty());
        // A search on a searcher from before the reload opens it, uncached.
        let late = cache.get(segment).unwrap();
        assert!(!Arc::ptr_eq(&first, &late));
        assert!(
            cache.is_empty(),
            "a segment no longer searched was cached again"
        );
    }
}
