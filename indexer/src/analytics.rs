//! What the UI needs besides hits and the histogram: top values of fields (the field
//! sidebar), latency percentiles per host/app/task, the records around a record
//! (context), and the byte ranges of `msg` a query matched (highlighting).
//!
//! Keyword aggregations read the columnar fast fields by term ordinal and turn
//! ordinals into strings once per segment, so counting a million matches costs one
//! column read each, never a document load. Percentiles are exact: every latency of
//! the matches is held (8 bytes each, 80 MB per 10 million matches) rather than
//! sketched, which is simple and never wrong at the price of memory proportional to
//! the matches. The keys of the free-form `fields` object are not fast fields, so
//! their top values come from a sample of the newest matches instead of all of them.
//! These functions block and are meant for `spawn_blocking`.

use crate::error::{Error, Result};
use crate::highlight::{self, FragmentOptions};
use crate::query::{all_of, parse_time, time_range, user_query};
use crate::schema::{to_tantivy_date, RecordReader, LATENCY, TS};
use crate::search::{IndexView, NewestFirst};
use crate::sortkey::{ByKey, CustomScorer, CustomSegmentScorer};
use chrono::{DateTime, Utc};
use protocol::LogRecord;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Bound;
use tantivy::collector::{Collector, SegmentCollector, TopDocs};
use tantivy::columnar::{Cardinality, Column, StrColumn};
use tantivy::query::{BooleanQuery, Query, RangeQuery, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader, TantivyDocument, Term};

/// Keyword fields the sidebar always shows, in this order.
pub const SIDEBAR_FIELDS: [&str; 4] = ["host", "app", "level", "stream"];
/// How many of the newest matches are read to find the frequent `fields.*` keys.
pub const FIELDS_SAMPLE: usize = 500;
/// At most this many `fields.*` keys follow the fixed ones.
pub const MAX_EXTRA_KEYS: usize = 8;
pub const DEFAULT_TOP_SIZE: usize = 10;
pub const MAX_TOP_SIZE: usize = 1000;
pub const DEFAULT_CONTEXT: usize = 10;
pub const MAX_CONTEXT: usize = 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    pub value: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldTop {
    /// `host`, `app`, ... or `fields.<key>`.
    pub field: String,
    /// Most frequent first (ties by value).
    pub values: Vec<FieldValue>,
}

/// `GET /api/v1/fields`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldsResponse {
    pub fields: Vec<FieldTop>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyGroup {
    pub key: String,
    pub count: u64,
    pub avg: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// `GET /api/v1/latency`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyResponse {
    /// Largest count first.
    pub groups: Vec<LatencyGroup>,
}

/// `GET /api/v1/context`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextResponse {
    /// Oldest first, ending just before the record.
    pub before: Vec<LogRecord>,
    pub record: Option<LogRecord>,
    /// Oldest first, starting just after the record.
    pub after: Vec<LogRecord>,
}

/// Query and range shared by the aggregations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    pub q: String,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
}

/// What `/api/v1/latency` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Host,
    App,
    Task,
}

impl GroupBy {
    pub fn parse(value: &str) -> Result<GroupBy> {
        match value.trim() {
            "" | "host" => Ok(GroupBy::Host),
            "app" => Ok(GroupBy::App),
            "task" => Ok(GroupBy::Task),
            other => Err(Error::BadParam {
                name: "by",
                value: other.to_string(),
                expected: "host, app or task".to_string(),
            }),
        }
    }

    pub fn field(self) -> &'static str {
        match self {
            GroupBy::Host => "host",
            GroupBy::App => "app",
            GroupBy::Task => "task",
        }
    }
}

/// The query string of `GET /api/v1/context`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContextParams {
    pub task: Option<String>,
    pub ts: Option<String>,
    pub source: Option<String>,
    pub offset: Option<String>,
    pub n: Option<String>,
}

/// Identifies a record: its task, time and (source, offset).
#[derive(Debug, Clone, PartialEq)]
pub struct ContextRequest {
    pub task: String,
    pub ts: DateTime<Utc>,
    pub source: String,
    pub offset: u64,
    pub n: usize,
}

impl ContextParams {
    pub fn into_request(self) -> Result<ContextRequest> {
        let task = self
            .task
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| Error::BadParam {
                name: "task",
                value: String::new(),
                expected: "the task of the record".to_string(),
            })?;
        let ts_raw = self.ts.unwrap_or_default();
        let ts = parse_time("ts", &ts_raw, Utc::now())?;
        let offset = match self.offset.as_deref().map(str::trim) {
            None | Some("") => 0,
            Some(o) => o.parse().map_err(|_| Error::BadParam {
                name: "offset",
                value: o.to_string(),
                expected: "a non-negative integer".to_string(),
            })?,
        };
        let n = parse_size("n", self.n.as_deref(), DEFAULT_CONTEXT, MAX_CONTEXT)?;
        Ok(ContextRequest {
            task,
            ts,
            source: self.source.unwrap_or_default(),
            offset,
            n,
        })
    }
}

/// Parses an optional count parameter within `0..=max`.
pub fn parse_size(
    name: &'static str,
    value: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize> {
    match value.map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| Error::BadParam {
                name,
                value: v.to_string(),
                expected: format!("an integer from 0 to {max}"),
            }),
    }
}

impl IndexView {
    fn scoped(&self, scope: &Scope) -> Result<Box<dyn Query>> {
        let mut parts = vec![user_query(&self.index, &self.fields, &scope.q)?];
        parts.extend(time_range(
            &self.fields,
            self.parts.columns(),
            scope.start,
            scope.end,
        ));
        Ok(all_of(parts))
    }

    /// Top `size` values of the sidebar fields over every match, then of the most
    /// frequent `fields.*` keys of the newest [`FIELDS_SAMPLE`] matches (counted in
    /// that sample).
    pub fn top_fields(&self, scope: &Scope, size: usize) -> Result<FieldsResponse> {
        let searcher = self.parts.searcher_within(scope.start, scope.end);
        let query = self.scoped(scope)?;
        let counts = searcher.search(
            &*query,
            &KeywordCounts {
                fields: SIDEBAR_FIELDS.to_vec(),
            },
        )?;
        let mut out: Vec<FieldTop> = SIDEBAR_FIELDS
            .iter()
            .zip(counts)
            .map(|(name, counts)| FieldTop {
                field: name.to_string(),
                values: top_n(counts, size),
            })
            .collect();

        let sample = searcher.search(
            &*query,
            &TopDocs::with_limit(FIELDS_SAMPLE).order_by(ByKey::new(NewestFirst {
                columns: self.parts.columns().clone(),
            })),
        )?;
        let mut per_key: HashMap<String, HashMap<String, u64>> = HashMap::new();
        for (_, addr) in sample {
            let doc: TantivyDocument = searcher.doc(addr)?;
            for (k, v) in self.fields.stored_fields(&doc)? {
                let value = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                *per_key.entry(k).or_default().entry(value).or_default() += 1;
            }
        }
        let mut keys: Vec<(String, u64, HashMap<String, u64>)> = per_key
            .into_iter()
            .map(|(k, values)| (k, values.values().sum(), values))
            .collect();
        keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.extend(
            keys.into_iter()
                .take(MAX_EXTRA_KEYS)
                .map(|(k, _, values)| FieldTop {
                    field: format!("fields.{k}"),
                    values: top_n(values, size),
                }),
        );
        Ok(FieldsResponse { fields: out })
    }

    /// Count, average, p50/p90/p99 and max of `latency_ms` per group, over the
    /// matches that have a latency.
    pub fn latency(&self, scope: &Scope, by: GroupBy) -> Result<LatencyResponse> {
        let searcher = self.parts.searcher_within(scope.start, scope.end);
        let query = self.scoped(scope)?;
        let groups = searcher.search(&*query, &LatencyByGroup { group: by.field() })?;
        let mut out: Vec<LatencyGroup> = groups
            .into_iter()
            .map(|(key, values)| summarize(key, values))
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        Ok(LatencyResponse { groups: out })
    }

    /// The `n` records before and after the given one within its task, ordered by
    /// (ts, offset).
    pub fn context(&self, req: &ContextRequest) -> Result<ContextResponse> {
        let searcher = self.searcher();
        let f = &self.fields;
        let Some(task_field) = f.keyword("task") else {
            return Err(Error::Internal("schema has no task field".into()));
        };
        let task: Box<dyn Query> = Box::new(TermQuery::new(
            Term::from_field_text(task_field, &req.task),
            IndexRecordOption::Basic,
        ));
        let ts = Term::from_field_date(f.ts, to_tantivy_date(&req.ts));
        let off = Term::from_field_u64(f.offset, req.offset);
        let range = |lo: Bound<Term>, hi: Bound<Term>| -> Box<dyn Query> {
            Box::new(RangeQuery::new(lo, hi))
        };
        let same_ts = || range(Bound::Included(ts.clone()), Bound::Included(ts.clone()));
        // (ts, offset) < (ts0, offset0)
        let before_q = all_of(vec![
            task.box_clone(),
            Box::new(BooleanQuery::union(vec![
                range(Bound::Unbounded, Bound::Excluded(ts.clone())),
                all_of(vec![
                    same_ts(),
                    range(Bound::Unbounded, Bound::Excluded(off.clone())),
                ]),
            ])),
        ]);
        let after_q = all_of(vec![
            task.box_clone(),
            Box::new(BooleanQuery::union(vec![
                range(Bound::Excluded(ts.clone()), Bound::Unbounded),
                all_of(vec![
                    same_ts(),
                    range(Bound::Excluded(off.clone()), Bound::Unbounded),
                ]),
            ])),
        ]);
        let mut record_parts = vec![
            task,
            same_ts(),
            range(Bound::Included(off.clone()), Bound::Included(off)),
        ];
        if let Some(source_field) = f.keyword("source").filter(|_| !req.source.is_empty()) {
            record_parts.push(Box::new(TermQuery::new(
                Term::from_field_text(source_field, &req.source),
                IndexRecordOption::Basic,
            )));
        }
        let load = |hits: Vec<((i64, u64), tantivy::DocAddress)>| -> Result<Vec<LogRecord>> {
            let mut records = RecordReader::new(&self.fields);
            hits.into_iter()
                .map(|(_, addr)| {
                    let doc: TantivyDocument = searcher.doc(addr)?;
                    let segment = searcher.segment_reader(addr.segment_ord);
                    records.read(&doc, addr.segment_ord, segment, addr.doc_id)
                })
                .collect()
        };
        let mut before = if req.n == 0 {
            Vec::new()
        } else {
            load(searcher.search(
                &*before_q,
                &TopDocs::with_limit(req.n).order_by(ByKey::new(ByTsOffset { newest_first: true })),
            )?)?
        };
        before.reverse();
        let after = if req.n == 0 {
            Vec::new()
        } else {
            load(searcher.search(
                &*after_q,
                &TopDocs::with_limit(req.n).order_by(ByKey::new(ByTsOffset {
                    newest_first: false,
                })),
            )?)?
        };
        let record = load(searcher.search(
            &*all_of(record_parts),
            &TopDocs::with_limit(1).order_by(ByKey::new(ByTsOffset { newest_first: true })),
        )?)?
        .pop();
        Ok(ContextResponse {
            before,
            record,
            after,
        })
    }

    /// Per record, the byte ranges of `msg` matched by the terms of `q` (sorted,
    /// disjoint) and HTML fragments of `msg` with those matches in `<em>`.
    pub fn highlights(&self, q: &str, records: &[LogRecord]) -> Result<Vec<Highlight>> {
        let query = user_query(&self.index, &self.fields, q)?;
        let words = highlight::positive_terms(&*query, &self.fields.msg_fields());
        let mut tokenizer = crate::schema::msg_tokenizer();
        let opts = FragmentOptions::default();
        Ok(records
            .iter()
            .map(|rec| {
                let ranges = highlight::match_ranges(&mut tokenizer, &words, &rec.msg);
                Highlight {
                    fragments: highlight::fragments(&rec.msg, &ranges, &opts),
                    ranges,
                }
            })
            .collect())
    }
}

/// The highlighting of one hit's `msg`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Highlight {
    /// Byte ranges of the matched terms.
    pub ranges: Vec<[usize; 2]>,
    /// HTML-escaped fragments with the matches in `<em>`; empty when none matched.
    pub fragments: Vec<String>,
}

fn top_n(counts: HashMap<String, u64>, n: usize) -> Vec<FieldValue> {
    let mut v: Vec<FieldValue> = counts
        .into_iter()
        .map(|(value, count)| FieldValue { value, count })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    v.truncate(n);
    v
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn summarize(key: String, mut values: Vec<f64>) -> LatencyGroup {
    let count = values.len();
    let (sum, max) = values
        .iter()
        .fold((0.0, f64::NEG_INFINITY), |(s, m), v| (s + v, m.max(*v)));
    let avg = if count == 0 { 0.0 } else { sum / count as f64 };
    // Exact nearest-rank percentiles by selection instead of a full sort: p99 over
    // all values, then p90 and p50 within the part below it. A group of a day's
    // calls holds millions of values, and sorting them was most of the time.
    let p99 = select_percentile(&mut values, 99.0);
    let below_p99 = rank(count, 99.0);
    let p90 = select_percentile_in(&mut values, below_p99, count, 90.0);
    let below_p90 = rank(count, 90.0);
    let p50 = select_percentile_in(&mut values, below_p90, count, 50.0);
    LatencyGroup {
        key,
        count: count as u64,
        avg,
        p50,
        p90,
        p99,
        max: if count == 0 { 0.0 } else { max },
    }
}

/// 1-based nearest rank of percentile `p` among `n` values (0 when `n` is 0).
fn rank(n: usize, p: f64) -> usize {
    if n == 0 {
        return 0;
    }
    (((p / 100.0) * n as f64).ceil() as usize).clamp(1, n)
}

/// The nearest-rank percentile `p` of `values`, reordering them around it.
fn select_percentile(values: &mut [f64], p: f64) -> f64 {
    let n = values.len();
    select_percentile_in(values, n, n, p)
}

/// Like [`select_percentile`] for the first `prefix` of `values`, which must hold the
/// `prefix` smallest of all `n` (as a previous selection of a higher rank leaves them).
fn select_percentile_in(values: &mut [f64], prefix: usize, n: usize, p: f64) -> f64 {
    let r = rank(n, p);
    if r == 0 || prefix == 0 {
        return 0.0;
    }
    let (_, v, _) = values[..prefix].select_nth_unstable_by(r - 1, f64::total_cmp);
    *v
}

/// Public for the Elasticsearch layer's percentiles.
pub fn percentile_of_sorted(sorted: &[f64], p: f64) -> f64 {
    percentile(sorted, p)
}

/// Value counts of several keyword fields over the matches.
pub(crate) struct KeywordCounts {
    pub fields: Vec<&'static str>,
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
    pub group: &'static str,
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

/// Sort key (ts micros, offset), highest first or (negated) lowest first.
struct ByTsOffset {
    newest_first: bool,
}

struct ByTsOffsetSegment {
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

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Percentiles by selection are the nearest-rank percentiles of the sorted
        /// values, as the full sort gave them.
        #[test]
        fn summarize_matches_sorting(values in proptest::collection::vec(-1e6f64..1e6, 0..300)) {
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let g = summarize("k".into(), values);
            proptest::prop_assert_eq!(g.count, sorted.len() as u64);
            proptest::prop_assert_eq!(g.p50, percentile(&sorted, 50.0));
            proptest::prop_assert_eq!(g.p90, percentile(&sorted, 90.0));
            proptest::prop_assert_eq!(g.p99, percentile(&sorted, 99.0));
            proptest::prop_assert_eq!(g.max, sorted.last().copied().unwrap_or(0.0));
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let g = summarize("h".into(), (1..=100).rev().map(f64::from).collect());
        assert_eq!(
            (g.count, g.p50, g.p90, g.p99, g.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert!((g.avg - 50.5).abs() < 1e-9);
        let one = summarize("h".into(), vec![7.0]);
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
    }

    #[test]
    fn group_by_and_sizes_reject_bad_values() {
        assert_eq!(GroupBy::parse("app").unwrap(), GroupBy::App);
        let err = GroupBy::parse("zone").unwrap_err().to_string();
        assert!(err.contains("by") && err.contains("zone"), "{err}");
        let err = parse_size("size", Some("1001"), 10, 1000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1001"), "{err}");
        assert_eq!(parse_size("size", None, 10, 1000).unwrap(), 10);
    }

    #[test]
    fn context_params_need_a_task_and_a_time() {
        let err = ContextParams::default().into_request().unwrap_err();
        assert!(err.to_string().contains("task"), "{err}");
        let err = ContextParams {
            task: Some("t".into()),
            ts: Some("yesterday".into()),
            ..Default::default()
        }
        .into_request()
        .unwrap_err();
        assert!(err.to_string().contains("yesterday"), "{err}");
    }
}
