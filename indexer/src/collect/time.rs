//! Matches counted over time: the native histogram's buckets, the Elasticsearch
//! `date_histogram`'s fixed intervals, and the oldest match (where an open-ended
//! histogram starts).

use crate::columns::ColumnCache;
use std::collections::BTreeMap;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader};

/// Roughly how many buckets a histogram has; intervals are rounded to "nice" values.
pub const TARGET_BUCKETS: i64 = 60;

/// Bucket boundaries: a "nice" interval, buckets aligned to multiples of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketLayout {
    /// Start of the first bucket, micros.
    pub first: i64,
    /// Bucket width, micros.
    pub interval: i64,
    pub count: usize,
}

impl BucketLayout {
    /// Buckets covering `start..=end` (micros).
    pub fn new(start: i64, end: i64) -> BucketLayout {
        const NICE_MS: [i64; 22] = [
            1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000,
            60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000,
        ];
        const DAY_MS: i64 = 86_400_000;
        let span_ms = (end.saturating_sub(start) / 1000).max(1);
        let wanted = (span_ms + TARGET_BUCKETS - 1) / TARGET_BUCKETS;
        let interval_ms = NICE_MS
            .iter()
            .copied()
            .chain([3, 6, 12].map(|h| h * 3_600_000))
            .find(|n| *n >= wanted)
            .unwrap_or_else(|| ((wanted + DAY_MS - 1) / DAY_MS) * DAY_MS);
        let interval = interval_ms * 1000;
        let first = start.div_euclid(interval) * interval;
        let count = ((end - first) / interval + 1) as usize;
        BucketLayout {
            first,
            interval,
            count,
        }
    }

    pub fn bucket_of(&self, ts: i64) -> Option<usize> {
        if ts < self.first {
            return None;
        }
        let i = ((ts - self.first) / self.interval) as usize;
        (i < self.count).then_some(i)
    }

    pub fn bucket_start(&self, i: usize) -> i64 {
        self.first + self.interval * i as i64
    }
}

/// Match counts per bucket of a [`BucketLayout`].
pub(crate) struct HistogramCollector {
    pub(crate) layout: BucketLayout,
    pub(crate) columns: ColumnCache,
}

pub(crate) struct HistogramSegment {
    layout: BucketLayout,
    ts: Column<tantivy::DateTime>,
    counts: Vec<u64>,
    buf: Vec<Option<tantivy::DateTime>>,
}

impl Collector for HistogramCollector {
    type Fruit = Vec<u64>;
    type Child = HistogramSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<HistogramSegment> {
        Ok(HistogramSegment {
            layout: self.layout,
            ts: self.columns.get(segment)?.ts.clone(),
            counts: vec![0; self.layout.count],
            buf: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<u64>>) -> tantivy::Result<Vec<u64>> {
        let mut total = vec![0; self.layout.count];
        for f in fruits {
            for (t, c) in total.iter_mut().zip(f) {
                *t += c;
            }
        }
        Ok(total)
    }
}

impl SegmentCollector for HistogramSegment {
    type Fruit = Vec<u64>;

    fn collect(&mut self, doc: DocId, _: Score) {
        if let Some(i) = self
            .ts
            .first(doc)
            .and_then(|t| self.layout.bucket_of(t.into_timestamp_micros()))
        {
            self.counts[i] += 1;
        }
    }

    /// A block of `ts` at once: decoding the bit-packed column per block instead of
    /// per document is most of a match-all histogram's time.
    fn collect_block(&mut self, docs: &[DocId]) {
        let mut buf = std::mem::take(&mut self.buf);
        crate::columns::ts_block(&self.ts, docs, &mut buf);
        for t in buf.iter().flatten() {
            if let Some(i) = self.layout.bucket_of(t.into_timestamp_micros()) {
                self.counts[i] += 1;
            }
        }
        self.buf = buf;
    }

    fn harvest(self) -> Vec<u64> {
        self.counts
    }
}

/// The histogram split by the value of a keyword field of few values (`level`): per
/// value, the matches in each bucket; matches without the field count under "".
/// Ordinals are counted per segment in a dense table and turned into strings once at
/// harvest, so the split costs one column read per match beside the time.
pub(crate) struct SplitHistogram {
    pub(crate) layout: BucketLayout,
    pub(crate) columns: ColumnCache,
    pub(crate) field: &'static str,
}

pub(crate) struct SplitHistogramSegment {
    layout: BucketLayout,
    ts: Column<tantivy::DateTime>,
    split: Option<tantivy::columnar::StrColumn>,
    /// Index 0: no value; `ord + 1`: the value of that ordinal.
    counts: Vec<Vec<u64>>,
}

/// Most distinct values a split counts per segment; the rest count as "".
const MAX_SPLIT_VALUES: u64 = 64;

impl Collector for SplitHistogram {
    type Fruit = BTreeMap<String, Vec<u64>>;
    type Child = SplitHistogramSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<SplitHistogramSegment> {
        let split = segment.fast_fields().str(self.field)?;
        let values = split
            .as_ref()
            .map_or(0, |c| c.num_terms() as u64)
            .min(MAX_SPLIT_VALUES);
        Ok(SplitHistogramSegment {
            layout: self.layout,
            ts: self.columns.get(segment)?.ts.clone(),
            split,
            counts: vec![vec![0; self.layout.count]; values as usize + 1],
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(
        &self,
        fruits: Vec<BTreeMap<String, Vec<u64>>>,
    ) -> tantivy::Result<BTreeMap<String, Vec<u64>>> {
        let mut total: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for f in fruits {
            for (k, counts) in f {
                let t = total.entry(k).or_insert_with(|| vec![0; self.layout.count]);
                for (t, c) in t.iter_mut().zip(counts) {
                    *t += c;
                }
            }
        }
        Ok(total)
    }
}

impl SegmentCollector for SplitHistogramSegment {
    type Fruit = BTreeMap<String, Vec<u64>>;

    fn collect(&mut self, doc: DocId, _: Score) {
        let Some(i) = self
            .ts
            .first(doc)
            .and_then(|t| self.layout.bucket_of(t.into_timestamp_micros()))
        else {
            return;
        };
        let row = self
            .split
            .as_ref()
            .and_then(|c| c.term_ords(doc).next())
            .filter(|ord| *ord < MAX_SPLIT_VALUES)
            .map_or(0, |ord| ord as usize + 1);
        self.counts[row][i] += 1;
    }

    fn harvest(self) -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut name = String::new();
        for (row, counts) in self.counts.into_iter().enumerate() {
            if counts.iter().all(|c| *c == 0) {
                continue;
            }
            name.clear();
            if row > 0 {
                if let Some(col) = &self.split {
                    if !col.ord_to_str(row as u64 - 1, &mut name).unwrap_or(false) {
                        name.clear();
                    }
                }
            }
            let t = out
                .entry(name.clone())
                .or_insert_with(|| vec![0; counts.len()]);
            for (t, c) in t.iter_mut().zip(counts) {
                *t += c;
            }
        }
        out
    }
}

/// Oldest `ts` (micros) among the matches.
pub(crate) struct MinTs {
    pub(crate) columns: ColumnCache,
}

pub(crate) struct MinTsSegment {
    ts: Column<tantivy::DateTime>,
    min: Option<i64>,
}

impl Collector for MinTs {
    type Fruit = Option<i64>;
    type Child = MinTsSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<MinTsSegment> {
        Ok(MinTsSegment {
            ts: self.columns.get(segment)?.ts.clone(),
            min: None,
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Option<i64>>) -> tantivy::Result<Option<i64>> {
        Ok(fruits.into_iter().flatten().min())
    }
}

impl SegmentCollector for MinTsSegment {
    type Fruit = Option<i64>;

    fn collect(&mut self, doc: DocId, _: Score) {
        if let Some(t) = self.ts.first(doc) {
            let t = t.into_timestamp_micros();
            self.min = Some(self.min.map_or(t, |m| m.min(t)));
        }
    }

    fn harvest(self) -> Option<i64> {
        self.min
    }
}

/// Match counts per fixed-width time bucket (keyed by bucket start, micros).
pub(crate) struct DateBuckets {
    pub(crate) interval: i64,
    pub(crate) columns: ColumnCache,
}

pub(crate) struct DateBucketsSegment {
    interval: i64,
    ts: Column<tantivy::DateTime>,
    counts: BTreeMap<i64, u64>,
    /// The bucket of the last document and its count not yet in `counts`: the
    /// documents of a segment come mostly in time order, so most skip the map.
    run: Option<(i64, u64)>,
    buf: Vec<Option<tantivy::DateTime>>,
}

impl DateBucketsSegment {
    fn count(&mut self, t: tantivy::DateTime) {
        let key = t.into_timestamp_micros().div_euclid(self.interval) * self.interval;
        match &mut self.run {
            Some((k, n)) if *k == key => *n += 1,
            run => {
                if let Some((k, n)) = run.replace((key, 1)) {
                    *self.counts.entry(k).or_insert(0) += n;
                }
            }
        }
    }
}

impl Collector for DateBuckets {
    type Fruit = BTreeMap<i64, u64>;
    type Child = DateBucketsSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<DateBucketsSegment> {
        Ok(DateBucketsSegment {
            interval: self.interval,
            ts: self.columns.get(segment)?.ts.clone(),
            counts: BTreeMap::new(),
            run: None,
            buf: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<BTreeMap<i64, u64>>) -> tantivy::Result<BTreeMap<i64, u64>> {
        let mut total = BTreeMap::new();
        for f in fruits {
            for (k, c) in f {
                *total.entry(k).or_insert(0) += c;
            }
        }
        Ok(total)
    }
}

impl SegmentCollector for DateBucketsSegment {
    type Fruit = BTreeMap<i64, u64>;

    fn collect(&mut self, doc: DocId, _: Score) {
        if let Some(t) = self.ts.first(doc) {
            self.count(t);
        }
    }

    /// A block of `ts` at once (as the native histogram): decoding the column per
    /// block instead of per document.
    fn collect_block(&mut self, docs: &[DocId]) {
        let mut buf = std::mem::take(&mut self.buf);
        crate::columns::ts_block(&self.ts, docs, &mut buf);
        for t in buf.iter().flatten() {
            self.count(*t);
        }
        self.buf = buf;
    }

    fn harvest(mut self) -> BTreeMap<i64, u64> {
        if let Some((k, n)) = self.run.take() {
            *self.counts.entry(k).or_insert(0) += n;
        }
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fifteen_minutes_gets_about_sixty_buckets() {
        let end = 1_800_000_000_000_000i64;
        let l = BucketLayout::new(end - 15 * 60 * 1_000_000, end);
        assert_eq!(l.interval, 15_000_000);
        assert!((60..=61).contains(&l.count), "{l:?}");
    }

    proptest! {
        /// Every instant of the range falls in exactly one bucket, and there are
        /// never more than about 60 buckets.
        #[test]
        fn layout_covers_the_range(
            start in -4_000_000_000_000_000i64..4_000_000_000_000_000i64,
            span in 0i64..400 * 86_400_000_000,
            frac in 0.0f64..=1.0,
        ) {
            let end = start + span;
            let l = BucketLayout::new(start, end);
            prop_assert!(l.count >= 1 && l.count <= TARGET_BUCKETS as usize + 2, "{:?}", l);
            let t = start + (span as f64 * frac) as i64;
            let i = l.bucket_of(t.min(end));
            prop_assert!(i.is_some(), "{:?} t={}", l, t);
            let i = i.unwrap();
            prop_assert!(l.bucket_start(i) <= t && t < l.bucket_start(i) + l.interval);
            prop_assert!(l.bucket_of(start).is_some() && l.bucket_of(end).is_some());
        }
    }
}
