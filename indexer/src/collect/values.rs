//! Values of the matches gathered by field: counts of keyword values (the sidebar,
//! `terms`), latencies per group (the latency table), every value of a numeric field
//! (`percentiles`, `avg`, ...).

use crate::schema::LATENCY;
use std::collections::HashMap;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Cardinality, Column, StrColumn};
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader};

/// Value counts of several keyword fields over the matches.
pub(crate) struct KeywordCounts {
    pub(crate) fields: Vec<&'static str>,
}

pub(crate) struct KeywordCountsSegment {
    columns: Vec<Option<StrColumn>>,
    counts: Vec<OrdCounts>,
    buf: Vec<Option<u64>>,
}

/// Counts per term ordinal: an array when the column has few distinct values (hosts,
/// apps, levels; hashing every document's ordinal was most of the sidebar's time),
/// a map when it has many (ids).
#[derive(Debug, Clone)]
enum OrdCounts {
    Dense(Vec<u64>),
    Sparse(HashMap<u64, u64>),
}

/// Distinct values up to which a column is counted in an array.
const DENSE_ORDS: usize = 1 << 16;

impl OrdCounts {
    fn for_column(col: Option<&StrColumn>) -> OrdCounts {
        match col.map(|c| c.num_terms()) {
            Some(n) if n <= DENSE_ORDS => OrdCounts::Dense(vec![0; n]),
            _ => OrdCounts::Sparse(HashMap::new()),
        }
    }

    fn add(&mut self, ord: u64) {
        match self {
            OrdCounts::Dense(v) => {
                if let Some(c) = v.get_mut(ord as usize) {
                    *c += 1;
                }
            }
            OrdCounts::Sparse(m) => *m.entry(ord).or_insert(0) += 1,
        }
    }

    fn into_nonzero(self) -> Vec<(u64, u64)> {
        match self {
            OrdCounts::Dense(v) => v
                .into_iter()
                .enumerate()
                .filter(|(_, c)| *c > 0)
                .map(|(o, c)| (o as u64, c))
                .collect(),
            OrdCounts::Sparse(m) => m.into_iter().collect(),
        }
    }
}

impl Collector for KeywordCounts {
    type Fruit = Vec<HashMap<String, u64>>;
    type Child = KeywordCountsSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<KeywordCountsSegment> {
        let columns = self
            .fields
            .iter()
            .map(|f| segment.fast_fields().str(f))
            .collect::<tantivy::Result<Vec<_>>>()?;
        Ok(KeywordCountsSegment {
            counts: columns
                .iter()
                .map(|c| OrdCounts::for_column(c.as_ref()))
                .collect(),
            columns,
            buf: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(
        &self,
        fruits: Vec<Vec<HashMap<String, u64>>>,
    ) -> tantivy::Result<Vec<HashMap<String, u64>>> {
        let mut total = vec![HashMap::new(); self.fields.len()];
        for fruit in fruits {
            for (t, f) in total.iter_mut().zip(fruit) {
                for (k, c) in f {
                    *t.entry(k).or_insert(0) += c;
                }
            }
        }
        Ok(total)
    }
}

impl SegmentCollector for KeywordCountsSegment {
    type Fruit = Vec<HashMap<String, u64>>;

    fn collect(&mut self, doc: DocId, _: Score) {
        for (col, counts) in self.columns.iter().zip(self.counts.iter_mut()) {
            if let Some(col) = col {
                for ord in col.term_ords(doc) {
                    counts.add(ord);
                }
            }
        }
    }

    /// Ordinals a block at a time for single-valued columns (all of the sidebar's).
    fn collect_block(&mut self, docs: &[DocId]) {
        let mut buf = std::mem::take(&mut self.buf);
        for (col, counts) in self.columns.iter().zip(self.counts.iter_mut()) {
            let Some(col) = col else { continue };
            if col.ords().get_cardinality() == Cardinality::Multivalued {
                for doc in docs {
                    for ord in col.term_ords(*doc) {
                        counts.add(ord);
                    }
                }
                continue;
            }
            buf.clear();
            buf.resize(docs.len(), None);
            col.ords().first_vals(docs, &mut buf);
            for ord in buf.iter().flatten() {
                counts.add(*ord);
            }
        }
        self.buf = buf;
    }

    fn harvest(self) -> Vec<HashMap<String, u64>> {
        self.columns
            .iter()
            .zip(self.counts)
            .map(|(col, counts)| {
                let counts = counts.into_nonzero();
                let mut out = HashMap::with_capacity(counts.len());
                if let Some(col) = col {
                    let mut buf = String::new();
                    for (ord, c) in counts {
                        buf.clear();
                        if col.ord_to_str(ord, &mut buf).unwrap_or(false) {
                            out.insert(buf.clone(), c);
                        }
                    }
                }
                out
            })
            .collect()
    }
}

/// Every `latency_ms` of the matches, per value of a keyword field.
pub(crate) struct LatencyByGroup {
    pub(crate) group: &'static str,
}

pub(crate) struct LatencyByGroupSegment {
    group: Option<StrColumn>,
    latency: Option<Column<f64>>,
    /// Values per group ordinal.
    values: Vec<Vec<f64>>,
    lat_buf: Vec<Option<f64>>,
    ord_buf: Vec<Option<u64>>,
}

fn add_value(values: &mut Vec<Vec<f64>>, ord: u64, latency: f64) {
    let i = ord as usize;
    if i >= values.len() {
        values.resize_with(i + 1, Vec::new);
    }
    values[i].push(latency);
}

impl Collector for LatencyByGroup {
    type Fruit = HashMap<String, Vec<f64>>;
    type Child = LatencyByGroupSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<LatencyByGroupSegment> {
        Ok(LatencyByGroupSegment {
            group: segment.fast_fields().str(self.group)?,
            latency: segment.fast_fields().column_opt::<f64>(LATENCY)?,
            values: Vec::new(),
            lat_buf: Vec::new(),
            ord_buf: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(
        &self,
        fruits: Vec<HashMap<String, Vec<f64>>>,
    ) -> tantivy::Result<HashMap<String, Vec<f64>>> {
        let mut total: HashMap<String, Vec<f64>> = HashMap::new();
        for fruit in fruits {
            for (k, mut v) in fruit {
                total.entry(k).or_default().append(&mut v);
            }
        }
        Ok(total)
    }
}

impl SegmentCollector for LatencyByGroupSegment {
    type Fruit = HashMap<String, Vec<f64>>;

    fn collect(&mut self, doc: DocId, _: Score) {
        let (Some(lat), Some(group)) = (&self.latency, &self.group) else {
            return;
        };
        if let (Some(l), Some(ord)) = (lat.first(doc), group.term_ords(doc).next()) {
            add_value(&mut self.values, ord, l);
        }
    }

    /// Both columns a block at a time; the group by its first value, as `collect`.
    fn collect_block(&mut self, docs: &[DocId]) {
        let (Some(lat), Some(group)) = (&self.latency, &self.group) else {
            return;
        };
        let mut lat_buf = std::mem::take(&mut self.lat_buf);
        lat_buf.clear();
        lat_buf.resize(docs.len(), None);
        lat.first_vals(docs, &mut lat_buf);
        if group.ords().get_cardinality() == Cardinality::Multivalued {
            for (doc, l) in docs.iter().zip(&lat_buf) {
                if let (Some(l), Some(ord)) = (l, group.term_ords(*doc).next()) {
                    add_value(&mut self.values, ord, *l);
                }
            }
        } else {
            let mut ord_buf = std::mem::take(&mut self.ord_buf);
            ord_buf.clear();
            ord_buf.resize(docs.len(), None);
            group.ords().first_vals(docs, &mut ord_buf);
            for (l, ord) in lat_buf.iter().zip(&ord_buf) {
                if let (Some(l), Some(ord)) = (l, ord) {
                    add_value(&mut self.values, *ord, *l);
                }
            }
            self.ord_buf = ord_buf;
        }
        self.lat_buf = lat_buf;
    }

    fn harvest(self) -> HashMap<String, Vec<f64>> {
        let mut out = HashMap::with_capacity(self.values.len());
        if let Some(col) = &self.group {
            let mut buf = String::new();
            for (ord, v) in self.values.into_iter().enumerate() {
                if v.is_empty() {
                    continue;
                }
                buf.clear();
                if col.ord_to_str(ord as u64, &mut buf).unwrap_or(false) {
                    out.insert(buf.clone(), v);
                }
            }
        }
        out
    }
}

/// Which numeric fast field [`NumericValues`] reads, by its type.
#[derive(Clone, Copy)]
pub(crate) enum NumericColumn {
    F64(&'static str),
    U64(&'static str),
}

/// Every value of a numeric fast field over the matches.
pub(crate) struct NumericValues {
    pub(crate) column: NumericColumn,
}

pub(crate) enum NumericSegmentColumn {
    F64(Option<Column<f64>>),
    U64(Option<Column<u64>>),
}

pub(crate) struct NumericValuesSegment {
    column: NumericSegmentColumn,
    values: Vec<f64>,
}

impl Collector for NumericValues {
    type Fruit = Vec<f64>;
    type Child = NumericValuesSegment;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<NumericValuesSegment> {
        let ff = segment.fast_fields();
        let column = match self.column {
            NumericColumn::F64(n) => NumericSegmentColumn::F64(ff.column_opt::<f64>(n)?),
            NumericColumn::U64(n) => NumericSegmentColumn::U64(ff.column_opt::<u64>(n)?),
        };
        Ok(NumericValuesSegment {
            column,
            values: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<f64>>) -> tantivy::Result<Vec<f64>> {
        Ok(fruits.into_iter().flatten().collect())
    }
}

impl SegmentCollector for NumericValuesSegment {
    type Fruit = Vec<f64>;

    fn collect(&mut self, doc: DocId, _: Score) {
        let v = match &self.column {
            NumericSegmentColumn::F64(Some(c)) => c.first(doc),
            NumericSegmentColumn::U64(Some(c)) => c.first(doc).map(|v| v as f64),
            _ => None,
        };
        if let Some(v) = v {
            self.values.push(v);
        }
    }

    fn harvest(self) -> Vec<f64> {
        self.values
    }
}
