//! Turning what a client sends (a Lucene-like query string, a time range in one of
//! three spellings, an opaque cursor) into Tantivy queries.
//!
//! The query language is Tantivy's own `QueryParser` (default field `msg`, AND by
//! default) rather than a parser of ours: it already speaks fields, phrases,
//! `AND/OR/NOT`, ranges and `fields.key:value` on the JSON field. The trade-off is
//! that its error messages are Tantivy's, which we pass through with the query they
//! concern.
//!
//! Cursors are keyset cursors over the total order (ts, uid), not offsets or "n hits
//! with this ts already seen": commits and merges between two pages reorder documents
//! that share a timestamp, and a keyset is the only cursor that neither skips nor
//! repeats a record across them.

use crate::columns::ColumnCache;
use crate::error::{Error, Result};
use crate::schema::{to_tantivy_date, Fields, MSG};
use chrono::{DateTime, Duration, Utc};
use std::ops::Bound;
use tantivy::columnar::Cardinality;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, EmptyScorer, EnableScoring, Explanation, Occur, Query,
    QueryParser, RangeQuery, Scorer, Weight,
};
use tantivy::query_grammar::{self, UserInputAst, UserInputLeaf};
use tantivy::{
    DocId, DocSet, Index, Score, SegmentReader, Term, COLLECT_BLOCK_BUFFER_LEN, TERMINATED,
};

const TIME_EXPECTED: &str = "RFC 3339 (2026-11-23T10:00:00Z), epoch milliseconds, \
     or now / now-15m (units ms, s, m, h, d, w)";

/// Parses `start`/`end`: RFC 3339, epoch milliseconds, `now`, or `now-<n><unit>`.
pub fn parse_time(name: &'static str, value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let bad = || Error::BadParam {
        name,
        value: value.to_string(),
        expected: TIME_EXPECTED.to_string(),
    };
    let v = value.trim();
    if let Some(rel) = v.strip_prefix("now") {
        if rel.is_empty() {
            return Ok(now);
        }
        let (sign, amount) = match rel.as_bytes()[0] {
            b'-' => (-1, &rel[1..]),
            b'+' => (1, &rel[1..]),
            _ => return Err(bad()),
        };
        let split = amount.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (digits, unit) = amount.split_at(split);
        let n: i64 = digits.parse().map_err(|_| bad())?;
        let d = match unit {
            "ms" => Duration::try_milliseconds(n),
            "s" => Duration::try_seconds(n),
            "m" => Duration::try_minutes(n),
            "h" => Duration::try_hours(n),
            "d" => Duration::try_days(n),
            "w" => Duration::try_weeks(n),
            _ => None,
        }
        .ok_or_else(bad)?;
        let shifted = if sign < 0 {
            now.checked_sub_signed(d)
        } else {
            now.checked_add_signed(d)
        };
        return shifted.ok_or_else(bad);
    }
    if !v.is_empty()
        && v.trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        let ms: i64 = v.parse().map_err(|_| bad())?;
        return DateTime::from_timestamp_millis(ms).ok_or_else(bad);
    }
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| bad())
}

/// Position after the last hit of a page: the (ts, uid) sort key of that hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub ts_micros: i64,
    pub uid: u64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("c1.{}.{:x}", self.ts_micros, self.uid)
    }

    /// The cursor of an oldest-first page: tagged apart, so that a newest-first
    /// cursor sent with `sort=oldest` (or the reverse) is refused, not misread.
    pub fn encode_oldest(&self) -> String {
        format!("a1.{}.{:x}", self.ts_micros, self.uid)
    }

    pub fn decode(s: &str) -> Result<Cursor> {
        Self::decode_tagged(s, "c1")
    }

    pub fn decode_oldest(s: &str) -> Result<Cursor> {
        Self::decode_tagged(s, "a1")
    }

    fn decode_tagged(s: &str, tag: &str) -> Result<Cursor> {
        let bad = || Error::Protocol(protocol::Error::BadCursor(s.to_string()));
        let mut parts = s.split('.');
        if parts.next() != Some(tag) {
            return Err(bad());
        }
        let ts_micros = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let uid = parts
            .next()
            .filter(|p| !p.is_empty() && p.len() <= 16)
            .and_then(|p| u64::from_str_radix(p, 16).ok())
            .ok_or_else(bad)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Cursor { ts_micros, uid })
    }
}

/// Longest query text accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;
/// Deepest nesting of parentheses accepted: the parser recurses once per level.
/// Tantivy 0.25's grammar parsed a group twice, so parse time doubled with each
/// level (tantivy#2498: 24 levels held a core for 13 s); 0.27 parses in linear time,
/// and 32 is about Elasticsearch's own bound on nested `bool` queries.
pub const MAX_QUERY_DEPTH: usize = 32;
/// Most prefix operators (`NOT`, `-`, `+`, `!`) in a row: each is a level of
/// recursion in the parser, and 3,000 of them overflowed a worker's stack and
/// aborted the whole process (issue 15).
pub const MAX_QUERY_PREFIXES: usize = 4;
/// Most words (clauses, operators) in a query.
pub const MAX_QUERY_WORDS: usize = 1024;

/// Refuses, before any parsing, a query whose size or shape would make the parser
/// recurse deeply or take exponential time. Quoted text is not counted.
pub fn check_query_shape(q: &str) -> std::result::Result<(), String> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "query of {} bytes; at most {MAX_QUERY_BYTES}",
            q.len()
        ));
    }
    let (mut depth, mut deepest, mut words, mut prefixes) = (0usize, 0usize, 0usize, 0usize);
    let (mut quoted, mut escaped, mut in_word) = (false, false, false);
    let mut word = String::new();
    let end_word = |word: &mut String, prefixes: &mut usize| {
        let w = std::mem::take(word);
        if w.is_empty() {
            return;
        }
        if w == "NOT" {
            *prefixes += 1;
        } else {
            *prefixes = 0;
        }
    };
    for c in q.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => {
                quoted = !quoted;
                prefixes = 0;
            }
            _ if quoted => {}
            '(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' => depth = depth.saturating_sub(1),
            '-' | '+' | '!' if !in_word => prefixes += 1,
            c if c.is_whitespace() => {
                if in_word {
                    words += 1;
                    end_word(&mut word, &mut prefixes);
                }
                in_word = false;
            }
            c => {
                in_word = true;
                if word.len() < 4 {
                    word.push(c);
                }
                if !matches!(word.as_str(), "N" | "NO" | "NOT") {
                    prefixes = 0;
                }
            }
        }
        if prefixes > MAX_QUERY_PREFIXES {
            return Err(format!(
                "more than {MAX_QUERY_PREFIXES} NOT, -, + or ! in a row"
            ));
        }
        if deepest > MAX_QUERY_DEPTH {
            return Err(format!(
                "parentheses nested more than {MAX_QUERY_DEPTH} levels deep"
            ));
        }
    }
    if in_word {
        words += 1;
        end_word(&mut word, &mut prefixes);
    }
    if prefixes > MAX_QUERY_PREFIXES {
        return Err(format!(
            "more than {MAX_QUERY_PREFIXES} NOT, -, + or ! in a row"
        ));
    }
    if words > MAX_QUERY_WORDS {
        return Err(format!("{words} words; at most {MAX_QUERY_WORDS}"));
    }
    Ok(())
}

/// Parses the user's query; empty means everything.
pub fn user_query(index: &Index, fields: &Fields, q: &str) -> Result<Box<dyn Query>> {
    if q.trim().is_empty() {
        return Ok(Box::new(AllQuery));
    }
    let bad = |reason: String| Error::BadQuery {
        query: q.chars().take(200).collect(),
        reason,
    };
    check_query_shape(q).map_err(bad)?;
    let ast = query_grammar::parse_query(q).map_err(|_| {
        // The strict parser says only "no"; the lenient one says where.
        let (_, errors) = query_grammar::parse_query_lenient(q);
        bad(match errors.first() {
            Some(e) => format!("syntax error: {} at position {}", e.message, e.pos),
            None => "syntax error".to_string(),
        })
    })?;
    let mut parser = QueryParser::for_index(index, vec![fields.msg]);
    parser.set_conjunction_by_default();
    build(&parser, fields, match_all_when_only_negative(ast)).map_err(|e| bad(e.to_string()))
}

/// Tantivy's parser, except for text on `msg`: the parser would tokenise it with the
/// tokenizer of the `msg` field, which holds the words only, and lose the ids (see
/// `crate::msg`). The clause structure is the parser's own: a bare clause is a must
/// (conjunction by default).
fn build(
    parser: &QueryParser,
    fields: &Fields,
    ast: UserInputAst,
) -> std::result::Result<Box<dyn Query>, String> {
    match ast {
        UserInputAst::Clause(clauses) => {
            let clauses = clauses
                .into_iter()
                .map(|(occur, sub)| Ok((occur.unwrap_or(Occur::Must), build(parser, fields, sub)?)))
                .collect::<std::result::Result<Vec<_>, String>>()?;
            Ok(Box::new(BooleanQuery::new(clauses)))
        }
        UserInputAst::Boost(sub, boost) => Ok(Box::new(BoostQuery::new(
            build(parser, fields, *sub)?,
            boost.into_inner() as f32,
        ))),
        UserInputAst::Leaf(leaf) => {
            if let UserInputLeaf::Literal(lit) = leaf.as_ref() {
                let on_msg = match &lit.field_name {
                    None => true,
                    Some(f) => f == MSG,
                };
                if on_msg {
                    let toks = crate::msg::tokens(&lit.phrase);
                    if let Some(q) = crate::msg::id_phrase(fields, &toks, lit.slop, lit.prefix)
                        .map_err(|e| e.to_string())?
                    {
                        return Ok(q);
                    }
                }
            }
            parser
                .build_query_from_user_input_ast(UserInputAst::Leaf(leaf))
                .map_err(|e| e.to_string())
        }
    }
}

/// Tantivy's boolean query matches nothing when all its clauses are negative, so
/// `a AND NOT b` (parsed as `+a +(-b)`) or `-level:debug` would find nothing; the
/// user means "everything except", so such clause lists get a match-all clause.
fn match_all_when_only_negative(ast: UserInputAst) -> UserInputAst {
    match ast {
        UserInputAst::Clause(clauses) => {
            let only_negative =
                !clauses.is_empty() && clauses.iter().all(|(o, _)| *o == Some(Occur::MustNot));
            let mut clauses: Vec<_> = clauses
                .into_iter()
                .map(|(o, sub)| (o, match_all_when_only_negative(sub)))
                .collect();
            if only_negative {
                clauses.push((
                    Some(Occur::Must),
                    UserInputAst::Leaf(Box::new(UserInputLeaf::All)),
                ));
            }
            UserInputAst::Clause(clauses)
        }
        UserInputAst::Boost(sub, boost) => {
            UserInputAst::Boost(Box::new(match_all_when_only_negative(*sub)), boost)
        }
        leaf @ UserInputAst::Leaf(_) => leaf,
    }
}

/// `start <= ts <= end`; `None` when both are unbounded.
pub fn time_range(
    fields: &Fields,
    columns: &ColumnCache,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> Option<Box<dyn Query>> {
    let bound = |t: Option<DateTime<Utc>>| match t {
        Some(t) => Bound::Included(Term::from_field_date(fields.ts, to_tantivy_date(&t))),
        None => Bound::Unbounded,
    };
    if start.is_none() && end.is_none() {
        return None;
    }
    let micros = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_micros());
    Some(Box::new(TsRange {
        inner: RangeQuery::new(bound(start), bound(end)),
        start: micros(start),
        end: micros(end),
        columns: columns.clone(),
    }))
}

/// `start <= ts <= end` that looks at each segment's smallest and largest `ts` first:
/// a segment wholly inside the range matches every document without reading the
/// column per document, one wholly outside matches nothing, and only a segment
/// straddling a bound runs the fast-field range. Searches of "the last day" mostly
/// cover whole segments, and the per-document range was a fifth of their time.
#[derive(Debug, Clone)]
pub struct TsRange {
    inner: RangeQuery,
    /// Micros, inclusive; `None` is unbounded.
    start: Option<i64>,
    end: Option<i64>,
    columns: ColumnCache,
}

impl Query for TsRange {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(TsRangeWeight {
            inner: self.inner.weight(scoring)?,
            start: self.start,
            end: self.end,
            columns: self.columns.clone(),
        }))
    }
}

struct TsRangeWeight {
    inner: Box<dyn Weight>,
    start: Option<i64>,
    end: Option<i64>,
    columns: ColumnCache,
}

impl TsRangeWeight {
    /// Whether the segment is wholly inside (`Some(true)`), wholly outside
    /// (`Some(false)`) or across a bound (`None`).
    fn covers(&self, reader: &SegmentReader) -> tantivy::Result<Option<bool>> {
        if reader.max_doc() == 0 {
            return Ok(Some(false));
        }
        let columns = self.columns.get(reader)?;
        let ts = &columns.ts;
        let Some((min, max)) = columns.ts_bounds() else {
            return Ok(Some(false));
        };
        let (lo, hi) = (self.start.unwrap_or(i64::MIN), self.end.unwrap_or(i64::MAX));
        if max < lo || min > hi {
            return Ok(Some(false));
        }
        // Every document must have a `ts` for "all of the segment" to be right.
        let full = ts.get_cardinality() == Cardinality::Full;
        Ok((full && lo <= min && max <= hi).then_some(true))
    }
}

/// Every document of a segment, like Tantivy's `AllScorer` but with a constant-time
/// `seek`: `AllScorer` seeks by advancing one document at a time, so intersected
/// with a rare term (a trace id) it walked the whole segment, 13 ms over 10M records.
struct EveryDoc {
    doc: DocId,
    max_doc: DocId,
}

impl EveryDoc {
    fn new(max_doc: DocId) -> EveryDoc {
        EveryDoc {
            doc: if max_doc == 0 { TERMINATED } else { 0 },
            max_doc,
        }
    }
}

impl DocSet for EveryDoc {
    fn advance(&mut self) -> DocId {
        self.doc = if self.doc == TERMINATED || self.doc + 1 >= self.max_doc {
            TERMINATED
        } else {
            self.doc + 1
        };
        self.doc
    }

    fn seek(&mut self, target: DocId) -> DocId {
        self.doc = if target >= self.max_doc {
            TERMINATED
        } else {
            target.max(self.doc)
        };
        self.doc
    }

    fn fill_buffer(&mut self, buffer: &mut [DocId; COLLECT_BLOCK_BUFFER_LEN]) -> usize {
        if self.doc == TERMINATED {
            return 0;
        }
        let n = ((self.max_doc - self.doc) as usize).min(buffer.len());
        for (i, slot) in buffer[..n].iter_mut().enumerate() {
            *slot = self.doc + i as DocId;
        }
        self.doc = if self.doc + (n as DocId) >= self.max_doc {
            TERMINATED
        } else {
            self.doc + n as DocId
        };
        n
    }

    fn doc(&self) -> DocId {
        self.doc
    }

    fn size_hint(&self) -> u32 {
        self.max_doc
    }
}

impl Scorer for EveryDoc {
    fn score(&mut self) -> Score {
        1.0
    }
}

impl Weight for TsRangeWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        match self.covers(reader)? {
            Some(true) => Ok(Box::new(EveryDoc::new(reader.max_doc()))),
            Some(false) => Ok(Box::new(EmptyScorer)),
            None => self.inner.scorer(reader, boost),
        }
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.inner.explain(reader, doc)
    }
}

/// Everything strictly older than the cursor in the (ts, uid) order.
pub fn before_cursor(fields: &Fields, c: Cursor) -> Box<dyn Query> {
    let ts =
        |micros| Term::from_field_date(fields.ts, tantivy::DateTime::from_timestamp_micros(micros));
    let older: Box<dyn Query> = Box::new(RangeQuery::new(
        Bound::Unbounded,
        Bound::Excluded(ts(c.ts_micros)),
    ));
    let same_ts: Box<dyn Query> = Box::new(RangeQuery::new(
        Bound::Included(ts(c.ts_micros)),
        Bound::Included(ts(c.ts_micros)),
    ));
    let lower_uid: Box<dyn Query> = Box::new(RangeQuery::new(
        Bound::Unbounded,
        Bound::Excluded(Term::from_field_u64(fields.uid, c.uid)),
    ));
    let tie: Box<dyn Query> = Box::new(BooleanQuery::intersection(vec![same_ts, lower_uid]));
    Box::new(BooleanQuery::union(vec![older, tie]))
}

/// Everything strictly newer than the cursor in the (ts, uid) order.
pub fn after_cursor(fields: &Fields, c: Cursor) -> Box<dyn Query> {
    let ts = Term::from_field_date(
        fields.ts,
        tantivy::DateTime::from_timestamp_micros(c.ts_micros),
    );
    let newer: Box<dyn Query> = Box::new(RangeQuery::new(
        Bound::Excluded(ts.clone()),
        Bound::Unbounded,
    ));
    let same: Box<dyn Query> = Box::new(RangeQuery::new(
        Bound::Included(ts.clone()),
        Bound::Included(ts),
    ));
    let higher_uid: Box<dyn Query> = Box::new(RangeQuery::new(
        Bound::Excluded(Term::from_field_u64(fields.uid, c.uid)),
        Bound::Unbounded,
    ));
    Box::new(BooleanQuery::union(vec![
        newer,
        Box::new(BooleanQuery::intersection(vec![same, higher_uid])),
    ]))
}

/// Intersection of the given queries (the single query itself when there is one).
pub fn all_of(mut queries: Vec<Box<dyn Query>>) -> Box<dyn Query> {
    // "Everything" adds nothing to an intersection but a per-document seek.
    if queries.len() > 1 {
        queries.retain(|q| !q.is::<AllQuery>());
        if queries.is_empty() {
            return Box::new(AllQuery);
        }
    }
    if queries.len() == 1 {
        return queries.remove(0);
    }
    Box::new(BooleanQuery::intersection(queries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<Box<dyn Query>> {
        let fields = Fields::new();
        let index = fields.index_builder().create_in_ram().unwrap();
        user_query(&index, &fields, q)
    }

    /// Issue 15: `q=` followed by 3,000 times `NOT ` and `a` overflowed the stack of
    /// a runtime worker and aborted the process. Run on a thread with a worker's
    /// 2 MiB stack: an overflow here would abort the test binary the same way.
    #[test]
    fn three_thousand_nots_are_refused_before_parsing() {
        let q = format!("{}a", "NOT ".repeat(3000));
        let err = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || parse(&q).err().map(|e| e.to_string()))
            .unwrap()
            .join()
            .unwrap()
            .expect("refused");
        assert!(err.contains("at most 8192"), "{err}");
        // Within the size limit, the run of operators is what is refused.
        let err = parse(&format!("{}a", "NOT ".repeat(1000)))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("in a row"), "{err}");
        for q in ["- - - - - -a", "!!!!!!a", "NOT NOT NOT NOT NOT a"] {
            assert!(parse(q).is_err(), "{q}");
        }
    }

    /// Issue 15: 24 nested parentheses held a core for 13 s (the time doubled with
    /// each level, tantivy#2498); 28 levels now parse within 100 ms, and anything
    /// past the limit is refused at once.
    #[test]
    fn deeply_nested_parentheses_parse_in_linear_time_or_are_refused_at_once() {
        let q = format!("{}a{}", "(".repeat(28), ")".repeat(28));
        let started = std::time::Instant::now();
        parse(&q).expect("28 levels are within the limit");
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        let deep = MAX_QUERY_DEPTH + 1;
        let q = format!("{}a{}", "(".repeat(deep), ")".repeat(deep));
        let started = std::time::Instant::now();
        let err = parse(&q).expect_err("refused").to_string();
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        assert!(err.contains("nested more than"), "{err}");
    }

    #[test]
    fn ordinary_queries_pass_the_shape_check() {
        for q in [
            "app:fib AND level:error \"timed out\"",
            "latency_ms:>250 AND NOT host:node-2",
            "-level:debug",
            "a AND (b OR (c AND (d OR e)))",
            "\"(((((((((((quoted parens are text)))))))))))\"",
            "msg:\"- - - - - - dashes in a phrase\"",
            "path:/a-b-c-d-e-f",
            "x NOT y NOT z NOT w NOT v NOT u",
        ] {
            check_query_shape(q).unwrap_or_else(|e| panic!("{q}: {e}"));
            parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        }
        let eight = format!("{}a{}", "(".repeat(8), ")".repeat(8));
        parse(&eight).unwrap();
        let long = "a ".repeat(MAX_QUERY_WORDS + 1);
        assert!(check_query_shape(&long).is_err());
        assert!(check_query_shape(&"x".repeat(MAX_QUERY_BYTES + 1)).is_err());
    }

    proptest::proptest! {
        /// Any text: the check and the parser answer (no panic, no overflow) and
        /// quickly; run with a worker's stack.
        #[test]
        fn any_query_text_gets_an_answer_quickly(q in "[()\"\\\\a-z:*!+ -NOTAD\\[\\]{}~^0-9]{0,300}") {
            let started = std::time::Instant::now();
            let _ = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || parse(&q).is_ok())
                .unwrap()
                .join()
                .unwrap();
            proptest::prop_assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
    }

    #[test]
    fn every_doc_seeks_in_constant_steps_and_fills_blocks() {
        let mut d = EveryDoc::new(200);
        assert_eq!(d.doc(), 0);
        assert_eq!(d.seek(150), 150);
        assert_eq!(d.advance(), 151);
        let mut buf = [0; COLLECT_BLOCK_BUFFER_LEN];
        let n = d.fill_buffer(&mut buf);
        assert_eq!(&buf[..n], &(151..200).collect::<Vec<u32>>()[..]);
        assert_eq!(d.doc(), TERMINATED);
        assert_eq!(d.fill_buffer(&mut buf), 0);
        let mut d = EveryDoc::new(200);
        assert_eq!(d.seek(200), TERMINATED);
        let d = EveryDoc::new(0);
        assert_eq!(d.doc(), TERMINATED);
        let mut d = EveryDoc::new(1000);
        let mut seen = Vec::new();
        loop {
            let n = d.fill_buffer(&mut buf);
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        assert_eq!(seen, (0..1000).collect::<Vec<u32>>());
    }
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn parses_relative_times() {
        let n = now();
        assert_eq!(parse_time("start", "now", n).unwrap(), n);
        assert_eq!(
            parse_time("start", "now-15m", n).unwrap(),
            n - Duration::minutes(15)
        );
        assert_eq!(
            parse_time("start", "now-1h", n).unwrap(),
            n - Duration::hours(1)
        );
        assert_eq!(
            parse_time("start", "now-7d", n).unwrap(),
            n - Duration::days(7)
        );
        assert_eq!(
            parse_time("end", "now+30s", n).unwrap(),
            n + Duration::seconds(30)
        );
    }

    #[test]
    fn parses_rfc3339_and_epoch_millis() {
        let n = now();
        assert_eq!(
            parse_time("start", "2026-11-23T11:00:00+01:00", n).unwrap(),
            n
        );
        assert_eq!(
            parse_time("start", &n.timestamp_millis().to_string(), n).unwrap(),
            n
        );
    }

    #[test]
    fn bad_times_name_the_parameter_and_value() {
        for v in [
            "yesterday",
            "now-",
            "now-15",
            "now-15y",
            "now*2m",
            "",
            "12:00",
        ] {
            let err = parse_time("start", v, now()).unwrap_err().to_string();
            assert!(
                err.contains("start") && err.contains(&format!("{v:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn cursor_rejects_garbage() {
        for s in [
            "",
            "c1",
            "c1.5",
            "c1.x.5",
            "c2.1.1",
            "c1.1.1.1",
            "c1.1.12345678901234567",
        ] {
            let err = Cursor::decode(s).unwrap_err().to_string();
            assert!(err.contains("cursor"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn cursor_round_trips(ts in any::<i64>(), uid in any::<u64>()) {
            let c = Cursor { ts_micros: ts, uid };
            prop_assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }

        #[test]
        fn cursor_decode_never_panics(s in ".*") {
            let _ = Cursor::decode(&s);
        }

        #[test]
        fn time_parse_never_panics(s in ".*") {
            let _ = parse_time("start", &s, now());
        }

        #[test]
        fn epoch_millis_round_trip(ms in -8_000_000_000_000i64..8_000_000_000_000i64) {
            let t = parse_time("end", &ms.to_string(), now()).unwrap();
            prop_assert_eq!(t.timestamp_millis(), ms);
        }
    }
}
