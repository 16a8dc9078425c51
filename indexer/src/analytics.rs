//! What the UI needs besides hits and the histogram: top values of fields (the field
//! sidebar), latency percentiles per host/app/task, the records around a record
//! (context), and the byte ranges of `msg` a query matched (highlighting).
//!
//! Keyword aggregations ([`crate::collect`]) read the columnar fast fields by term
//! ordinal and turn ordinals into strings once per segment, so counting a million
//! matches costs one column read each, never a document load. Percentiles are exact: every latency of
//! the matches is held (8 bytes each, 80 MB per 10 million matches) rather than
//! sketched, which is simple and never wrong at the price of memory proportional to
//! the matches. The keys of the free-form `fields` object are not fast fields, so
//! their top values come from a sample of the newest matches instead of all of them.
//! These functions block and are meant for `spawn_blocking`.

use crate::collect::{ByKey, ByTsOffset, KeywordCounts, LatencyByGroup, NewestFirst};
use crate::error::{Error, Result};
use crate::highlight::{self, FragmentOptions};
use crate::query::{all_of, parse_time, time_range, user_query};
use crate::schema::{to_tantivy_date, RecordReader};
use crate::search::IndexView;
use chrono::{DateTime, Utc};
use protocol::LogRecord;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Bound;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Query, RangeQuery, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{TantivyDocument, Term};

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
    /// With `sketch=true` only: the group's latencies as a mergeable sketch, which
    /// the shard fan-out ([`crate::fanout`]) asks every shard for and merges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sketch: Option<crate::sketch::Sketch>,
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
    /// Shard mode only: within these shards' documents, as the fan-out asks each
    /// owner; without it a shard-mode indexer fans out.
    pub shards: Option<String>,
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
        let mut parts = vec![self.restricted(user_query(&self.index, &self.fields, &scope.q)?)];
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
    /// With `sketch`, each group also carries its [`crate::sketch::Sketch`].
    pub fn latency(&self, scope: &Scope, by: GroupBy, sketch: bool) -> Result<LatencyResponse> {
        let searcher = self.parts.searcher_within(scope.start, scope.end);
        let query = self.scoped(scope)?;
        let groups = searcher.search(&*query, &LatencyByGroup { group: by.field() })?;
        let mut out: Vec<LatencyGroup> = groups
            .into_iter()
            .map(|(key, values)| {
                let s = sketch.then(|| crate::sketch::Sketch::of(&values));
                LatencyGroup {
                    sketch: s,
                    ..summarize(key, values)
                }
            })
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
        // Within this handle's shards (`shards=`), as every part below includes it.
        let task: Box<dyn Query> = self.restricted(Box::new(TermQuery::new(
            Term::from_field_text(task_field, &req.task),
            IndexRecordOption::Basic,
        )));
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

pub(crate) fn top_n(counts: HashMap<String, u64>, n: usize) -> Vec<FieldValue> {
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
        sketch: None,
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
