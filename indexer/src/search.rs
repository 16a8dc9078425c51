//! Executing searches and histograms against the current reader.
//!
//! Hits are ordered newest first by a custom score, the (ts, uid) pair read from fast
//! fields, rather than by relevance: for logs "most recent" is what people want, and
//! the unique pair makes keyset cursors exact. Counts come from the same query in the
//! same searcher, so `total` and the page agree. Histograms use a small fast-field
//! collector ([`crate::collect`]) instead of the aggregation framework: one column
//! read per match and no JSON round-trip. These functions block and are meant for
//! `spawn_blocking`.

use crate::collect::{
    ByKey, HistogramCollector, MinTs, NewestTop, SlowestFirst, SplitHistogram, TimeOrder,
};
use crate::error::{Error, Result};
use crate::partition::{MultiSearcher, Partitions};
use crate::query::{
    after_cursor, all_of, before_cursor, parse_time, time_range, user_query, Cursor,
};
use crate::schema::{Fields, RecordReader, LATENCY};
use chrono::{DateTime, Duration, Utc};
use protocol::{HistogramBucket, HistogramResponse, SearchResponse};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::ExistsQuery;
use tantivy::{Index, TantivyDocument};

pub use crate::collect::{BucketLayout, TARGET_BUCKETS};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;
/// Histogram range when neither `start` nor any match says where to begin.
pub const DEFAULT_HISTOGRAM_SPAN_MINUTES: i64 = 15;

/// A search with its parameters already parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    /// Query string; empty matches everything.
    pub q: String,
    /// Inclusive; `None` is unbounded.
    pub start: Option<DateTime<Utc>>,
    /// Inclusive; `None` means now (at the time of the search).
    pub end: Option<DateTime<Utc>>,
    /// Hits per page, at most [`MAX_LIMIT`]; 0 only counts.
    pub limit: usize,
    /// The `next` of an earlier page.
    pub cursor: Option<String>,
    /// Order of the hits.
    pub sort: Sort,
}

/// Order of search hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    /// By (ts, uid) descending: what a log viewer wants.
    #[default]
    NewestFirst,
    /// By (ts, uid) ascending: reading a range from its start, as a file reads.
    OldestFirst,
    /// By (latency_ms, uid) descending, only records that have a latency: the
    /// slowest calls first.
    LatencyDesc,
}

impl Sort {
    pub fn parse(value: &str) -> Result<Sort> {
        match value.trim() {
            "" | "newest" | "ts_desc" => Ok(Sort::NewestFirst),
            "oldest" | "ts_asc" => Ok(Sort::OldestFirst),
            "latency_desc" => Ok(Sort::LatencyDesc),
            other => Err(Error::BadParam {
                name: "sort",
                value: other.to_string(),
                expected: "newest, oldest or latency_desc".to_string(),
            }),
        }
    }
}

impl Default for SearchRequest {
    fn default() -> Self {
        SearchRequest {
            q: String::new(),
            start: None,
            end: None,
            limit: DEFAULT_LIMIT,
            cursor: None,
            sort: Sort::NewestFirst,
        }
    }
}

/// The query string of `GET /api/v1/search` (and `/histogram`), unparsed so that
/// every bad value gets our error message rather than a deserializer's.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SearchParams {
    pub q: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
    /// `latency_desc` or the default, newest first.
    pub sort: Option<String>,
    /// `true` adds the byte ranges of the matched terms in each hit's `msg`.
    pub highlight: Option<String>,
    /// Top values per field (`/api/v1/fields`).
    pub size: Option<String>,
    /// Grouping of `/api/v1/latency`: host, app or task.
    pub by: Option<String>,
    /// Shard mode only: restrict to these shards' documents (`0,3`), as the fan-out
    /// asks each owner; without it a shard-mode indexer fans out.
    pub shards: Option<String>,
    /// `/api/v1/latency` only: `true` adds each group's mergeable sketch
    /// ([`crate::sketch`]), what the shard fan-out asks owners for.
    pub sketch: Option<String>,
}

impl SearchParams {
    /// Whether `highlight=true` (or `1`) was asked for.
    pub fn wants_highlight(&self) -> Result<bool> {
        match self.highlight.as_deref().map(str::trim) {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(Error::BadParam {
                name: "highlight",
                value: other.to_string(),
                expected: "true or false".to_string(),
            }),
        }
    }

    pub fn into_request(self, now: DateTime<Utc>) -> Result<SearchRequest> {
        let (start, end) = parse_range(self.start.as_deref(), self.end.as_deref(), now)?;
        let limit = match self.limit.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_LIMIT)
                .ok_or_else(|| Error::BadParam {
                    name: "limit",
                    value: l.to_string(),
                    expected: format!("an integer from 0 to {MAX_LIMIT}"),
                })?,
        };
        Ok(SearchRequest {
            q: self.q.unwrap_or_default(),
            start,
            end: Some(end),
            limit,
            cursor: self.cursor.filter(|c| !c.is_empty()),
            sort: Sort::parse(self.sort.as_deref().unwrap_or(""))?,
        })
    }

    pub fn into_histogram_request(self, now: DateTime<Utc>) -> Result<HistogramRequest> {
        let (start, end) = parse_range(self.start.as_deref(), self.end.as_deref(), now)?;
        let by = match self.by.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(b) => Some(
                HISTOGRAM_SPLITS
                    .iter()
                    .copied()
                    .find(|s| *s == b)
                    .ok_or_else(|| Error::BadParam {
                        name: "by",
                        value: b.to_string(),
                        expected: format!("one of {}", HISTOGRAM_SPLITS.join(", ")),
                    })?,
            ),
        };
        Ok(HistogramRequest {
            q: self.q.unwrap_or_default(),
            start,
            end: Some(end),
            by,
        })
    }
}

fn parse_range(
    start: Option<&str>,
    end: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(Option<DateTime<Utc>>, DateTime<Utc>)> {
    let start = match start.filter(|s| !s.trim().is_empty()) {
        Some(s) => Some(parse_time("start", s, now)?),
        None => None,
    };
    let end = match end.filter(|s| !s.trim().is_empty()) {
        Some(s) => parse_time("end", s, now)?,
        None => now,
    };
    check_order(start, end)?;
    Ok((start, end))
}

fn check_order(start: Option<DateTime<Utc>>, end: DateTime<Utc>) -> Result<()> {
    match start {
        Some(s) if s > end => Err(Error::BadParam {
            name: "start",
            value: s.to_rfc3339(),
            expected: format!("a time at or before end ({})", end.to_rfc3339()),
        }),
        _ => Ok(()),
    }
}

/// A histogram with its parameters already parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramRequest {
    pub q: String,
    /// `None`: from the oldest match (or 15 minutes before `end` when nothing matches).
    pub start: Option<DateTime<Utc>>,
    /// `None` means now.
    pub end: Option<DateTime<Utc>>,
    /// `Some("level")`: each bucket also counts its matches per level.
    pub by: Option<&'static str>,
}

/// The fields a histogram may be split by: few values each, so the split stays small.
pub const HISTOGRAM_SPLITS: [&str; 1] = ["level"];

/// What searches need: cheap to clone (everything inside is reference-counted).
#[derive(Clone)]
pub struct IndexView {
    /// An empty in-memory index with the schema and tokenizers of the partitions,
    /// for query parsing and highlighting.
    pub index: Index,
    /// The day partitions, searched together.
    pub parts: Partitions,
    pub fields: Fields,
    /// Only documents of these sources count (`shards=` in shard mode, see
    /// [`crate::Indexer::scoped_to_shards`]); `None` is every document.
    pub sources: Option<Arc<Vec<String>>>,
}

impl IndexView {
    /// `q` within [`IndexView::sources`].
    pub(crate) fn restricted(
        &self,
        q: Box<dyn tantivy::query::Query>,
    ) -> Box<dyn tantivy::query::Query> {
        let Some(sources) = &self.sources else {
            return q;
        };
        let field = self
            .fields
            .keyword("source")
            .expect("the schema has source");
        let terms = sources
            .iter()
            .map(|s| tantivy::Term::from_field_text(field, s));
        all_of(vec![q, Box::new(tantivy::query::TermSetQuery::new(terms))])
    }

    /// A searcher over every partition as of their last reload.
    pub fn searcher(&self) -> MultiSearcher {
        self.parts.searcher()
    }

    pub fn search(&self, req: &SearchRequest) -> Result<SearchResponse> {
        if req.limit > MAX_LIMIT {
            return Err(Error::BadParam {
                name: "limit",
                value: req.limit.to_string(),
                expected: format!("an integer from 0 to {MAX_LIMIT}"),
            });
        }
        let end = req.end.unwrap_or_else(Utc::now);
        check_order(req.start, end)?;
        let cursor = match req.sort {
            Sort::NewestFirst => req.cursor.as_deref().map(Cursor::decode).transpose()?,
            Sort::OldestFirst | Sort::LatencyDesc => None,
        };
        let searcher = self.parts.searcher_within(req.start, Some(end));
        let mut parts = vec![self.restricted(user_query(&self.index, &self.fields, &req.q)?)];
        parts.extend(time_range(
            &self.fields,
            self.parts.columns(),
            req.start,
            Some(end),
        ));
        let matching = all_of(parts);

        if req.limit == 0 {
            let total = searcher.search(&*matching, &Count)?;
            return Ok(SearchResponse {
                total: total as u64,
                hits: Vec::new(),
                next: None,
            });
        }
        match req.sort {
            Sort::LatencyDesc => return self.search_by_latency(req, matching),
            Sort::OldestFirst => return self.search_oldest_first(req, &searcher, matching),
            Sort::NewestFirst => {}
        }
        // One more than asked tells whether there is an older page.
        let top = NewestTop {
            k: req.limit + 1,
            columns: self.parts.columns().clone(),
        };
        let (total, top_hits) = match cursor {
            None => searcher.search(&*matching, &top)?,
            Some(c) => {
                let total = searcher.search(&*matching, &Count)?;
                let page = all_of(vec![matching, before_cursor(&self.fields, c)]);
                (total, searcher.search(&*page, &top)?.1)
            }
        };
        self.page(
            &searcher,
            total,
            top_hits,
            req.limit,
            |&(ts_micros, uid)| Cursor { ts_micros, uid }.encode(),
        )
    }

    /// Oldest first, by the mirrored (ts, uid) key of the Elasticsearch layer's
    /// ascending sort; the cursor is the key of the last hit, tagged apart from the
    /// newest-first one.
    fn search_oldest_first(
        &self,
        req: &SearchRequest,
        searcher: &MultiSearcher,
        matching: Box<dyn tantivy::query::Query>,
    ) -> Result<SearchResponse> {
        let cursor = req
            .cursor
            .as_deref()
            .map(Cursor::decode_oldest)
            .transpose()?;
        let top = TopDocs::with_limit(req.limit + 1).order_by(ByKey::new(TimeOrder {
            asc: true,
            columns: self.parts.columns().clone(),
        }));
        let total = searcher.search(&*matching, &Count)?;
        let top_hits = match cursor {
            None => searcher.search(&*matching, &top)?,
            Some(c) => {
                let page = all_of(vec![matching, after_cursor(&self.fields, c)]);
                searcher.search(&*page, &top)?
            }
        };
        self.page(
            searcher,
            total,
            top_hits,
            req.limit,
            |&(neg_ts, rev_uid)| {
                Cursor {
                    ts_micros: neg_ts.saturating_neg(),
                    uid: u64::MAX - rev_uid,
                }
                .encode_oldest()
            },
        )
    }

    /// Slowest first over the matches that have a `latency_ms`; the cursor is the
    /// (latency, uid) key of the last hit, with the same keyset reasoning as by time.
    fn search_by_latency(
        &self,
        req: &SearchRequest,
        matching: Box<dyn tantivy::query::Query>,
    ) -> Result<SearchResponse> {
        let searcher = self.searcher();
        let has_latency: Box<dyn tantivy::query::Query> =
            Box::new(ExistsQuery::new(LATENCY.to_string(), false));
        let matching = all_of(vec![matching, has_latency]);
        let cursor = req
            .cursor
            .as_deref()
            .map(LatencyCursor::decode)
            .transpose()?;
        let top = TopDocs::with_limit(req.limit + 1).order_by(ByKey::new(SlowestFirst {
            columns: self.parts.columns().clone(),
        }));
        let total = searcher.search(&*matching, &Count)?;
        let top_hits = match cursor {
            None => searcher.search(&*matching, &top)?,
            Some(c) => {
                let page = all_of(vec![matching, c.before(&self.fields)]);
                searcher.search(&*page, &top)?
            }
        };
        self.page(&searcher, total, top_hits, req.limit, |&(key, uid)| {
            LatencyCursor { key, uid }.encode()
        })
    }

    /// Turns `limit + 1` top hits into one page: the extra hit only tells that there
    /// is a next page, whose cursor is the key of the last hit shown.
    fn page<K>(
        &self,
        searcher: &MultiSearcher,
        total: usize,
        mut top_hits: Vec<(K, tantivy::DocAddress)>,
        limit: usize,
        cursor_of: impl Fn(&K) -> String,
    ) -> Result<SearchResponse> {
        let next = if top_hits.len() > limit {
            top_hits.truncate(limit);
            top_hits.last().map(|(key, _)| cursor_of(key))
        } else {
            None
        };
        let mut hits = Vec::with_capacity(top_hits.len());
        let mut records = RecordReader::new(&self.fields);
        for (_, addr) in top_hits {
            let doc: TantivyDocument = searcher.doc(addr)?;
            let segment = searcher.segment_reader(addr.segment_ord);
            hits.push(records.read(&doc, addr.segment_ord, segment, addr.doc_id)?);
        }
        Ok(SearchResponse {
            total: total as u64,
            hits,
            next,
        })
    }

    pub fn histogram(&self, req: &HistogramRequest) -> Result<HistogramResponse> {
        let end = req.end.unwrap_or_else(Utc::now);
        check_order(req.start, end)?;
        let searcher = self.parts.searcher_within(req.start, Some(end));
        let q = self.restricted(user_query(&self.index, &self.fields, &req.q)?);
        let start = match req.start {
            Some(s) => s,
            None => {
                let up_to_end = all_of(
                    std::iter::once(q.box_clone())
                        .chain(time_range(
                            &self.fields,
                            self.parts.columns(),
                            None,
                            Some(end),
                        ))
                        .collect(),
                );
                let oldest = searcher.search(
                    &*up_to_end,
                    &MinTs {
                        columns: self.parts.columns().clone(),
                    },
                )?;
                oldest
                    .and_then(DateTime::from_timestamp_micros)
                    .unwrap_or(end - Duration::minutes(DEFAULT_HISTOGRAM_SPAN_MINUTES))
            }
        };
        let layout = BucketLayout::new(start.timestamp_micros(), end.timestamp_micros());
        let mut parts = vec![q];
        parts.extend(time_range(
            &self.fields,
            self.parts.columns(),
            Some(start),
            Some(end),
        ));
        let matching = all_of(parts);
        let (counts, split) = match req.by {
            None => {
                let counts = searcher.search(
                    &*matching,
                    &HistogramCollector {
                        layout,
                        columns: self.parts.columns().clone(),
                    },
                )?;
                (counts, BTreeMap::new())
            }
            Some(field) => {
                // One pass: the totals are the sums of the split.
                let split = searcher.search(
                    &*matching,
                    &SplitHistogram {
                        layout,
                        columns: self.parts.columns().clone(),
                        field,
                    },
                )?;
                let mut counts = vec![0; layout.count];
                for per in split.values() {
                    for (t, c) in counts.iter_mut().zip(per) {
                        *t += c;
                    }
                }
                (counts, split)
            }
        };
        let buckets = counts
            .into_iter()
            .enumerate()
            .map(|(i, count)| HistogramBucket {
                ts: DateTime::from_timestamp_micros(layout.bucket_start(i))
                    .unwrap_or(DateTime::UNIX_EPOCH),
                count,
                by: split
                    .iter()
                    .filter(|(_, per)| per[i] > 0)
                    .map(|(k, per)| (k.clone(), per[i]))
                    .collect(),
            })
            .collect();
        Ok(HistogramResponse {
            interval_ms: (layout.interval / 1000) as u64,
            buckets,
        })
    }
}

/// Position after the last hit of a slowest-first page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyCursor {
    /// `f64_to_u64(latency_ms)`.
    pub key: u64,
    pub uid: u64,
}

impl LatencyCursor {
    pub fn encode(&self) -> String {
        format!("l1.{:x}.{:x}", self.key, self.uid)
    }

    pub fn decode(s: &str) -> Result<LatencyCursor> {
        let bad = || Error::Protocol(protocol::Error::BadCursor(s.to_string()));
        let mut parts = s.split('.');
        if parts.next() != Some("l1") {
            return Err(bad());
        }
        let mut hex = || {
            parts
                .next()
                .filter(|p| !p.is_empty() && p.len() <= 16)
                .and_then(|p| u64::from_str_radix(p, 16).ok())
                .ok_or_else(bad)
        };
        let key = hex()?;
        let uid = hex()?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(LatencyCursor { key, uid })
    }

    /// Everything strictly after the cursor in the (latency, uid) descending order.
    fn before(&self, fields: &Fields) -> Box<dyn tantivy::query::Query> {
        use std::ops::Bound;
        use tantivy::query::{BooleanQuery, RangeQuery};
        use tantivy::Term;
        let l = Term::from_field_f64(fields.latency_ms, tantivy::u64_to_f64(self.key));
        let lower: Box<dyn tantivy::query::Query> = Box::new(RangeQuery::new(
            Bound::Unbounded,
            Bound::Excluded(l.clone()),
        ));
        let same: Box<dyn tantivy::query::Query> = Box::new(RangeQuery::new(
            Bound::Included(l.clone()),
            Bound::Included(l),
        ));
        let lower_uid: Box<dyn tantivy::query::Query> = Box::new(RangeQuery::new(
            Bound::Unbounded,
            Bound::Excluded(Term::from_field_u64(fields.uid, self.uid)),
        ));
        let tie: Box<dyn tantivy::query::Query> =
            Box::new(BooleanQuery::intersection(vec![same, lower_uid]));
        Box::new(BooleanQuery::union(vec![lower, tie]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::columns::ColumnCache;

    #[test]
    fn params_default_end_to_now_and_reject_bad_limit() {
        let now: DateTime<Utc> = "2026-11-23T10:00:00Z".parse().unwrap();
        let req = SearchParams::default().into_request(now).unwrap();
        assert_eq!(req.end, Some(now));
        assert_eq!(req.limit, DEFAULT_LIMIT);
        for bad in ["-1", "10001", "ten"] {
            let p = SearchParams {
                limit: Some(bad.into()),
                ..Default::default()
            };
            let err = p.into_request(now).unwrap_err().to_string();
            assert!(err.contains("limit") && err.contains(bad), "{err}");
        }
        let p = SearchParams {
            start: Some("now".into()),
            end: Some("now-1h".into()),
            ..Default::default()
        };
        assert!(p
            .into_request(now)
            .unwrap_err()
            .to_string()
            .contains("start"));
    }

    /// An in-RAM index of records one second apart from `base`, committed in
    /// segments of the given sizes, uids in an order unrelated to time.
    pub(crate) fn index_of(segments: &[usize]) -> (Index, Fields) {
        let fields = Fields::new();
        let index = fields.index_builder().create_in_ram().unwrap();
        let mut w: tantivy::IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        w.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
        let meta = protocol::TaskMeta {
            host: "h".into(),
            app: "a".into(),
            task: "a.1".into(),
            instance: 1,
            ports: vec![],
        };
        let base: DateTime<Utc> = "2026-11-22T00:00:00Z".parse().unwrap();
        let mut i = 0u64;
        for n in segments {
            for _ in 0..*n {
                // Shuffled times within a segment, and a few ties on ts.
                let secs = (i * 7919) % 1000 / 2;
                let mut r = protocol::LogRecord::new(
                    base + Duration::seconds(secs as i64),
                    &meta,
                    protocol::Stream::Stdout,
                    if i.is_multiple_of(3) {
                        "even error"
                    } else {
                        "odd"
                    },
                );
                r.offset = i + 1;
                w.add_document(fields.to_document(&r, (i * 104_729) % 1_000_003))
                    .unwrap();
                i += 1;
            }
            w.commit().unwrap();
        }
        (index, fields)
    }

    /// The segment shortcut of the time range changes no count: ranges inside,
    /// around, across and outside the segments, and open-ended ones.
    #[test]
    fn time_range_counts_match_a_plain_range() {
        let (index, fields) = index_of(&[200, 300, 500]);
        let searcher = index.reader().unwrap().searcher();
        // One cache for every range, as in the server: later ranges read columns
        // cached by earlier ones.
        let columns = ColumnCache::default();
        let base: DateTime<Utc> = "2026-11-22T00:00:00Z".parse().unwrap();
        let at = |s: i64| Some(base + Duration::seconds(s));
        let bound = |t: Option<DateTime<Utc>>| match t {
            Some(t) => std::ops::Bound::Included(tantivy::Term::from_field_date(
                fields.ts,
                crate::schema::to_tantivy_date(&t),
            )),
            None => std::ops::Bound::Unbounded,
        };
        for (start, end) in [
            (at(-10), at(1000)),
            (at(0), at(499)),
            (at(100), at(200)),
            (at(499), at(499)),
            (at(600), at(700)),
            (None, at(250)),
            (at(250), None),
        ] {
            let ours = time_range(&fields, &columns, start, end).unwrap();
            let plain = tantivy::query::RangeQuery::new(bound(start), bound(end));
            assert_eq!(
                searcher.search(&*ours, &Count).unwrap(),
                searcher.search(&plain, &Count).unwrap(),
                "{start:?}..{end:?}"
            );
            let with_term = all_of(vec![user_query(&index, &fields, "error").unwrap(), ours]);
            let plain_term = all_of(vec![
                user_query(&index, &fields, "error").unwrap(),
                Box::new(plain),
            ]);
            assert_eq!(
                searcher.search(&*with_term, &Count).unwrap(),
                searcher.search(&*plain_term, &Count).unwrap()
            );
        }
    }
}
