//! The orders hits are sorted in, as keys read from fast fields (see [`super::sortkey`]):
//! newest first, slowest first, by time and offset (context), and the Elasticsearch
//! layer's time order in either direction.

use super::sortkey::{CustomScorer, CustomSegmentScorer};
use crate::columns::ColumnCache;
use crate::schema::{LATENCY, TS};
use tantivy::columnar::Column;
use tantivy::{DocId, SegmentReader};

/// Sort key (ts micros, uid), highest first.
pub(crate) struct NewestFirst {
    pub(crate) columns: ColumnCache,
}

pub(crate) struct NewestFirstSegment {
    ts: Column<tantivy::DateTime>,
    uid: Column<u64>,
}

impl CustomScorer<(i64, u64)> for NewestFirst {
    type Child = NewestFirstSegment;
    fn segment_scorer(&self, segment: &SegmentReader) -> tantivy::Result<NewestFirstSegment> {
        let columns = self.columns.get(segment)?;
        Ok(NewestFirstSegment {
            ts: columns.ts.clone(),
            uid: columns.uid.clone(),
        })
    }
}

impl CustomSegmentScorer<(i64, u64)> for NewestFirstSegment {
    fn score(&mut self, doc: DocId) -> (i64, u64) {
        (
            self.ts
                .first(doc)
                .map_or(i64::MIN, |t| t.into_timestamp_micros()),
            self.uid.first(doc).unwrap_or(0),
        )
    }
}

/// Sort key (latency as an order-preserving u64, uid), highest first.
pub(crate) struct SlowestFirst {
    pub(crate) columns: ColumnCache,
}

pub(crate) struct SlowestFirstSegment {
    /// `None` in a segment where no record has a latency.
    latency: Option<Column<f64>>,
    uid: Column<u64>,
}

impl CustomScorer<(u64, u64)> for SlowestFirst {
    type Child = SlowestFirstSegment;
    fn segment_scorer(&self, segment: &SegmentReader) -> tantivy::Result<SlowestFirstSegment> {
        Ok(SlowestFirstSegment {
            latency: segment.fast_fields().column_opt::<f64>(LATENCY)?,
            uid: self.columns.get(segment)?.uid.clone(),
        })
    }
}

impl CustomSegmentScorer<(u64, u64)> for SlowestFirstSegment {
    fn score(&mut self, doc: DocId) -> (u64, u64) {
        (
            self.latency
                .as_ref()
                .and_then(|c| c.first(doc))
                .map_or(0, tantivy::f64_to_u64),
            self.uid.first(doc).unwrap_or(0),
        )
    }
}

/// Sort key (ts micros, offset), highest first or (negated) lowest first.
pub(crate) struct ByTsOffset {
    pub(crate) newest_first: bool,
}

pub(crate) struct ByTsOffsetSegment {
    newest_first: bool,
    ts: Column<tantivy::DateTime>,
    offset: Column<u64>,
}

impl CustomScorer<(i64, u64)> for ByTsOffset {
    type Child = ByTsOffsetSegment;
    fn segment_scorer(&self, segment: &SegmentReader) -> tantivy::Result<ByTsOffsetSegment> {
        Ok(ByTsOffsetSegment {
            newest_first: self.newest_first,
            ts: segment.fast_fields().date(TS)?,
            offset: segment.fast_fields().u64("offset")?,
        })
    }
}

impl CustomSegmentScorer<(i64, u64)> for ByTsOffsetSegment {
    fn score(&mut self, doc: DocId) -> (i64, u64) {
        let ts = self
            .ts
            .first(doc)
            .map_or(i64::MIN, |t| t.into_timestamp_micros());
        let offset = self.offset.first(doc).unwrap_or(0);
        if self.newest_first {
            (ts, offset)
        } else {
            // TopDocs keeps the highest keys; mirroring them keeps the lowest.
            (ts.saturating_neg(), u64::MAX - offset)
        }
    }
}

/// Sort key for `_search`: (ts, uid) descending, or mirrored for ascending.
pub(crate) struct TimeOrder {
    pub(crate) asc: bool,
    pub(crate) columns: ColumnCache,
}

pub(crate) struct TimeOrderSegment {
    asc: bool,
    ts: Column<tantivy::DateTime>,
    uid: Column<u64>,
}

impl CustomScorer<(i64, u64)> for TimeOrder {
    type Child = TimeOrderSegment;
    fn segment_scorer(&self, segment: &SegmentReader) -> tantivy::Result<TimeOrderSegment> {
        let columns = self.columns.get(segment)?;
        Ok(TimeOrderSegment {
            asc: self.asc,
            ts: columns.ts.clone(),
            uid: columns.uid.clone(),
        })
    }
}

impl CustomSegmentScorer<(i64, u64)> for TimeOrderSegment {
    fn score(&mut self, doc: DocId) -> (i64, u64) {
        let ts = self
            .ts
            .first(doc)
            .map_or(i64::MIN, |t| t.into_timestamp_micros());
        let uid = self.uid.first(doc).unwrap_or(0);
        if self.asc {
            (ts.saturating_neg(), u64::MAX - uid)
        } else {
            (ts, uid)
        }
    }
}
