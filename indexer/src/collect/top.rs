//! The page of newest matches and the count of all of them, in one pass.

use crate::columns::ColumnCache;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader};

/// Most hits a segment's heap is sized for up front: one more than the largest page
/// either API asks for ([`crate::search::MAX_LIMIT`], [`crate::es::MAX_WINDOW`]); a
/// larger `k` grows the heap as it fills.
const PREALLOCATED: usize = 10_001;

/// The `k` newest matches by (ts, uid) and the count of all matches, in one pass.
/// What `(Count, TopDocs::custom_score(NewestFirst))` computes, but reading `ts` a
/// block of documents at a time and `uid` only for a document that can enter the
/// top `k`: most matches of a large result are older than the `k`-th newest seen so
/// far and cost one column read.
pub(crate) struct NewestTop {
    pub(crate) k: usize,
    pub(crate) columns: ColumnCache,
}

type Keyed = ((i64, u64), tantivy::DocAddress);

pub(crate) struct NewestTopSegment {
    k: usize,
    segment: SegmentOrdinal,
    ts: Column<tantivy::DateTime>,
    uid: Column<u64>,
    /// The best `k` so far, the smallest on top.
    heap: BinaryHeap<Reverse<((i64, u64), DocId)>>,
    count: usize,
    buf: Vec<Option<tantivy::DateTime>>,
}

impl NewestTopSegment {
    fn offer(&mut self, doc: DocId, ts: Option<tantivy::DateTime>) {
        if self.k == 0 {
            return;
        }
        let ts = ts.map_or(i64::MIN, |t| t.into_timestamp_micros());
        if self.heap.len() == self.k {
            let Some(Reverse(((min_ts, min_uid), _))) = self.heap.peek() else {
                return;
            };
            if ts < *min_ts {
                return;
            }
            let (min_ts, min_uid) = (*min_ts, *min_uid);
            let key = (ts, self.uid.first(doc).unwrap_or(0));
            if key <= (min_ts, min_uid) {
                return;
            }
            self.heap.pop();
            self.heap.push(Reverse((key, doc)));
        } else {
            let key = (ts, self.uid.first(doc).unwrap_or(0));
            self.heap.push(Reverse((key, doc)));
        }
    }
}

impl Collector for NewestTop {
    type Fruit = (usize, Vec<Keyed>);
    type Child = NewestTopSegment;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<NewestTopSegment> {
        let columns = self.columns.get(reader)?;
        Ok(NewestTopSegment {
            k: self.k,
            segment,
            ts: columns.ts.clone(),
            uid: columns.uid.clone(),
            heap: BinaryHeap::with_capacity(self.k.min(PREALLOCATED)),
            count: 0,
            buf: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(
        &self,
        fruits: Vec<(usize, Vec<Keyed>)>,
    ) -> tantivy::Result<(usize, Vec<Keyed>)> {
        let mut total = 0;
        let mut all = Vec::new();
        for (count, hits) in fruits {
            total += count;
            all.extend(hits);
        }
        all.sort_unstable_by_key(|h| Reverse(h.0));
        all.truncate(self.k);
        Ok((total, all))
    }
}

impl SegmentCollector for NewestTopSegment {
    type Fruit = (usize, Vec<Keyed>);

    fn collect(&mut self, doc: DocId, _: Score) {
        self.count += 1;
        let ts = self.ts.first(doc);
        self.offer(doc, ts);
    }

    fn collect_block(&mut self, docs: &[DocId]) {
        self.count += docs.len();
        let mut buf = std::mem::take(&mut self.buf);
        crate::columns::ts_block(&self.ts, docs, &mut buf);
        for (doc, ts) in docs.iter().zip(&buf) {
            self.offer(*doc, *ts);
        }
        self.buf = buf;
    }

    fn harvest(self) -> (usize, Vec<Keyed>) {
        let segment = self.segment;
        let hits = self
            .heap
            .into_iter()
            .map(|Reverse((key, doc))| (key, tantivy::DocAddress::new(segment, doc)))
            .collect();
        (self.count, hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::{ByKey, NewestFirst};
    use crate::query::user_query;
    use crate::search::tests::index_of;
    use tantivy::collector::{Count, TopDocs};

    #[test]
    fn the_preallocation_covers_the_largest_page_of_either_api() {
        const {
            assert!(PREALLOCATED == crate::search::MAX_LIMIT + 1);
            assert!(PREALLOCATED > crate::es::MAX_WINDOW);
        }
    }

    /// `NewestTop` returns what `(Count, TopDocs::custom_score(NewestFirst))` did.
    #[test]
    fn newest_top_matches_top_docs() {
        let (index, fields) = index_of(&[300, 1, 0, 250, 449]);
        let searcher = index.reader().unwrap().searcher();
        for q in ["", "error", "odd"] {
            let query = user_query(&index, &fields, q).unwrap();
            for k in [0, 1, 7, 100, 2000] {
                let (count, mut ours) = searcher
                    .search(
                        &*query,
                        &NewestTop {
                            k,
                            columns: ColumnCache::default(),
                        },
                    )
                    .unwrap();
                let (want_count, want) = searcher
                    .search(
                        &*query,
                        &(
                            Count,
                            TopDocs::with_limit(k.max(1)).order_by(ByKey::new(NewestFirst {
                                columns: ColumnCache::default(),
                            })),
                        ),
                    )
                    .unwrap();
                assert_eq!(count, want_count, "{q:?}");
                let want: Vec<_> = want.into_iter().take(k).collect();
                ours.sort_by_key(|h| Reverse(h.0));
                assert_eq!(ours, want, "{q:?} k={k}");
            }
        }
    }
}
