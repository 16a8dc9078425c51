//! Sorting hits by a key read from fast fields: the small trait pair the indexer's
//! orders implement ([`super::order`]: newest first, slowest first, by time and
//! offset, the Elasticsearch time order), adapted to Tantivy's `SortKeyComputer`.
//!
//! Tantivy 0.27 replaced `CustomScorer`/`CustomSegmentScorer` with the more general
//! `SortKeyComputer` (comparators, score access, lazy thresholds). The orders here
//! need none of that: a key per document, highest first. Keeping the two-method
//! shape keeps each order a dozen lines; the trade-off is one adapter to maintain
//! when Tantivy's traits move again.

use std::marker::PhantomData;
use tantivy::collector::sort_key::NaturalComparator;
use tantivy::collector::{SegmentSortKeyComputer, SortKeyComputer};
use tantivy::{DocId, Score, SegmentReader};

/// Makes a [`CustomSegmentScorer`] for each segment searched.
pub(crate) trait CustomScorer<K>: Sync + Send + 'static {
    type Child: CustomSegmentScorer<K>;
    fn segment_scorer(&self, segment: &SegmentReader) -> tantivy::Result<Self::Child>;
}

/// The sort key of one document of a segment; higher sorts first.
pub(crate) trait CustomSegmentScorer<K>: 'static {
    fn score(&mut self, doc: DocId) -> K;
}

/// A [`CustomScorer`] as Tantivy's `TopDocs::order_by` takes it: highest key first.
pub(crate) struct ByKey<S, K>(S, PhantomData<fn() -> K>);

impl<S, K> ByKey<S, K> {
    pub(crate) fn new(scorer: S) -> Self {
        ByKey(scorer, PhantomData)
    }
}

/// One segment's part of [`ByKey`].
pub(crate) struct SegmentByKey<C, K>(C, PhantomData<fn() -> K>);

impl<S, K> SortKeyComputer for ByKey<S, K>
where
    S: CustomScorer<K>,
    K: 'static + PartialOrd + Clone + Send + Sync + std::fmt::Debug,
{
    type SortKey = K;
    type Child = SegmentByKey<S::Child, K>;
    type Comparator = NaturalComparator;

    fn segment_sort_key_computer(&self, segment: &SegmentReader) -> tantivy::Result<Self::Child> {
        Ok(SegmentByKey(self.0.segment_scorer(segment)?, PhantomData))
    }
}

impl<C, K> SegmentSortKeyComputer for SegmentByKey<C, K>
where
    C: CustomSegmentScorer<K>,
    K: 'static + PartialOrd + Clone + Send + Sync,
{
    type SortKey = K;
    type SegmentSortKey = K;
    type SegmentComparator = NaturalComparator;

    fn segment_sort_key(&mut self, doc: DocId, _score: Score) -> K {
        self.0.score(doc)
    }

    fn convert_segment_sort_key(&self, key: K) -> K {
        key
    }
}
