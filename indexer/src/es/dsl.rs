//! The query DSL turned into Tantivy queries: `query_string` (with ECS field names
//! rewritten to ours), `bool`, `term`, `terms`, `range`, `match`, `match_phrase`,
//! `exists`, `match_all`, the index-name filter, `sort` and `search_after`.
//!
//! Field names are resolved once ([`target`]) onto the schema, so an ECS name and
//! ours query the same column. Scoring is not kept: hits come in time order (see
//! [`super::search`]), so `should` clauses beside a `must` change nothing, which is
//! the trade-off of serving logs rather than documents ranked by relevance.

use crate::error::{Error, Result};
use crate::query::{parse_time, time_range, user_query, Cursor};
use crate::schema::{Fields, ES_ID, KEYWORDS, LATENCY, TS};
use crate::search::IndexView;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use std::ops::Bound;
use tantivy::query::{
    AllQuery, BooleanQuery, ExistsQuery, Occur, PhraseQuery, Query, QueryParser, RangeQuery,
    TermQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::Term;

pub(super) fn bad(reason: impl Into<String>) -> Error {
    Error::BadQuery {
        query: "(query DSL)".into(),
        reason: reason.into(),
    }
}

/// Where an Elasticsearch field name lives in our schema.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Target {
    Keyword(&'static str),
    /// `msg` or `path`: analysed text.
    Text(&'static str),
    Ts,
    F64(&'static str),
    U64(&'static str),
    /// A key of the `fields` JSON object, as a query path (`fields.user.name`).
    Json(String),
    Id,
}

pub(super) fn target(name: &str) -> Target {
    let name = name.strip_suffix(".keyword").unwrap_or(name);
    match name {
        "@timestamp" | "ts" | "timestamp" => Target::Ts,
        "message" | "msg" => Target::Text("msg"),
        "url.path" | "path" => Target::Text("path"),
        "host.name" | "host.hostname" | "host" => Target::Keyword("host"),
        "service.name" | "app" => Target::Keyword("app"),
        "log.level" | "level" => Target::Keyword("level"),
        "trace.id" | "trace_id" => Target::Keyword("trace_id"),
        "span.id" | "span_id" => Target::Keyword("span_id"),
        "parent.id" | "parent_span_id" => Target::Keyword("parent_span_id"),
        "http.request.method" | "method" => Target::Keyword("method"),
        "latency_ms" => Target::F64(LATENCY),
        "http.response.status_code" | "status" => Target::U64("status"),
        "instance" => Target::U64("instance"),
        "offset" => Target::U64("offset"),
        "_id" => Target::Id,
        other => {
            if let Some(k) = KEYWORDS.iter().find(|k| **k == other) {
                return Target::Keyword(k);
            }
            match other.strip_prefix("fields.") {
                Some(rest) => Target::Json(format!("fields.{rest}")),
                None => Target::Json(format!("fields.{other}")),
            }
        }
    }
}

/// Rewrites ECS field names in a Lucene query string to ours (`service.name:fib` →
/// `app:fib`), and any other field name the schema lacks to its key in `fields`
/// (`user.name:alice` → `fields.user.name:alice`, where bulk documents keep what has
/// no ECS place), at token starts outside quotes only. `known` tells our own names.
fn rewrite_query_string(q: &str, known: impl Fn(&str) -> bool) -> String {
    const NAMES: [(&str, &str); 12] = [
        ("@timestamp:", "ts:"),
        ("message:", "msg:"),
        ("host.name:", "host:"),
        ("host.hostname:", "host:"),
        ("service.name:", "app:"),
        ("log.level:", "level:"),
        ("trace.id:", "trace_id:"),
        ("span.id:", "span_id:"),
        ("parent.id:", "parent_span_id:"),
        ("http.request.method:", "method:"),
        ("http.response.status_code:", "status:"),
        ("url.path:", "path:"),
    ];
    let mut out = String::with_capacity(q.len());
    let mut rest = q;
    let mut at_token_start = true;
    let mut in_quotes = false;
    'outer: while !rest.is_empty() {
        if at_token_start && !in_quotes {
            for (from, to) in NAMES {
                if let Some(after) = rest.strip_prefix(from) {
                    out.push_str(to);
                    rest = after;
                    at_token_start = false;
                    continue 'outer;
                }
            }
            let name_len = rest
                .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '@')))
                .unwrap_or(rest.len());
            let name = &rest[..name_len];
            let starts_well = name
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || matches!(c, '_' | '@'));
            if starts_well
                && rest[name_len..].starts_with(':')
                && !name.starts_with("fields.")
                && !known(name)
            {
                out.push_str("fields.");
                out.push_str(name);
                rest = &rest[name_len..];
                at_token_start = false;
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
        if c == '\\' {
            // An escaped character is never a quote or a token start.
            if let Some(e) = rest.chars().next() {
                out.push(e);
                rest = &rest[e.len_utf8()..];
            }
            at_token_start = false;
            continue;
        }
        if c == '"' {
            in_quotes = !in_quotes;
        }
        at_token_start = c.is_whitespace() || matches!(c, '(' | '-' | '+' | '!');
    }
    out
}

/// Builds Tantivy queries from query DSL clauses, against one reader's schema.
pub(super) struct Builder<'a> {
    pub(super) view: &'a IndexView,
}

impl Builder<'_> {
    fn fields(&self) -> &Fields {
        &self.view.fields
    }

    fn field(&self, name: &str) -> Result<tantivy::schema::Field> {
        self.fields()
            .schema
            .get_field(name)
            .map_err(|_| bad(format!("unknown field {name:?}")))
    }

    /// `{"term": {...}}` and friends: exactly one field key (plus options).
    fn single_field<'v>(&self, kind: &str, body: &'v Value) -> Result<(&'v String, &'v Value)> {
        body.as_object()
            .and_then(|o| {
                o.iter()
                    .find(|(k, _)| !matches!(k.as_str(), "boost" | "_name"))
            })
            .ok_or_else(|| bad(format!("{kind} needs an object with one field: {body}")))
    }

    pub(super) fn query(&self, q: &Value) -> Result<Box<dyn Query>> {
        let obj = q
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or_else(|| bad(format!("expected one query clause, got {q}")))?;
        let (kind, body) = obj.iter().next().expect("one entry");
        match kind.as_str() {
            "match_all" => Ok(Box::new(AllQuery)),
            "match_none" => Ok(Box::new(BooleanQuery::new(vec![]))),
            "query_string" | "simple_query_string" => {
                let text = body
                    .get("query")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{kind} needs a \"query\" string")))?;
                let schema = &self.fields().schema;
                let known = |name: &str| schema.get_field(name).is_ok();
                user_query(
                    &self.view.index,
                    self.fields(),
                    &rewrite_query_string(text, known),
                )
            }
            "term" => {
                let (field, v) = self.single_field(kind, body)?;
                let v = v.get("value").unwrap_or(v);
                self.term(field, v)
            }
            "terms" => {
                let (field, v) = self.single_field(kind, body)?;
                let values = v
                    .as_array()
                    .ok_or_else(|| bad(format!("terms on {field} needs an array")))?;
                let parts = values
                    .iter()
                    .map(|v| self.term(field, v))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Box::new(BooleanQuery::union(parts)))
            }
            "match" | "match_phrase" => {
                let (field, v) = self.single_field(kind, body)?;
                let (text, and) = match v {
                    Value::Object(o) => (
                        o.get("query").cloned().unwrap_or(Value::Null),
                        o.get("operator")
                            .and_then(Value::as_str)
                            .is_some_and(|op| op.eq_ignore_ascii_case("and")),
                    ),
                    other => (other.clone(), false),
                };
                self.text_match(field, &text, kind == "match_phrase", and)
            }
            "range" => {
                let (field, v) = self.single_field(kind, body)?;
                self.range(field, v)
            }
            "exists" => {
                let field = body
                    .get("field")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("exists needs a \"field\""))?;
                match target(field) {
                    Target::Text("msg") => Ok(Box::new(AllQuery)),
                    Target::Keyword(n) | Target::F64(n) | Target::U64(n) => {
                        Ok(Box::new(ExistsQuery::new(n.to_string(), false)))
                    }
                    Target::Ts => Ok(Box::new(ExistsQuery::new(TS.to_string(), false))),
                    Target::Id => Ok(Box::new(ExistsQuery::new(ES_ID.to_string(), false))),
                    other => Err(bad(format!(
                        "exists on {field} ({other:?}) is not supported: only on keyword, time and numeric fields"
                    ))),
                }
            }
            "bool" => self.boolean(body),
            other => Err(bad(format!(
                "query type {other:?} is not supported (supported: bool, term, terms, match, match_phrase, range, exists, query_string, match_all)"
            ))),
        }
    }

    fn boolean(&self, body: &Value) -> Result<Box<dyn Query>> {
        let obj = body
            .as_object()
            .ok_or_else(|| bad("bool needs an object"))?;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let mut positive = false;
        let mut shoulds = Vec::new();
        for (key, occur) in [
            ("must", Occur::Must),
            ("filter", Occur::Must),
            ("must_not", Occur::MustNot),
            ("should", Occur::Should),
        ] {
            let list = match obj.get(key) {
                None => continue,
                Some(Value::Array(a)) => a.clone(),
                Some(one) => vec![one.clone()],
            };
            for q in &list {
                let built = self.query(q)?;
                match occur {
                    Occur::Should => shoulds.push(built),
                    Occur::Must => {
                        positive = true;
                        clauses.push((occur, built));
                    }
                    Occur::MustNot => clauses.push((occur, built)),
                }
            }
        }
        for k in obj.keys() {
            if !matches!(
                k.as_str(),
                "must"
                    | "filter"
                    | "must_not"
                    | "should"
                    | "minimum_should_match"
                    | "boost"
                    | "_name"
            ) {
                return Err(bad(format!("bool has an unknown key {k:?}")));
            }
        }
        let min_should = obj.get("minimum_should_match").and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        });
        if !shoulds.is_empty() {
            // Elasticsearch: without must/filter, at least one should must match.
            let required = min_should.unwrap_or(if positive { 0 } else { 1 });
            if required > 0 {
                clauses.push((Occur::Must, Box::new(BooleanQuery::union(shoulds))));
                positive = true;
            }
            // With must clauses and no minimum, should only affects scoring, which
            // our newest-first order ignores.
        }
        if !positive {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        }
        Ok(Box::new(BooleanQuery::new(clauses)))
    }

    fn parse_json_field(&self, path: &str, value: &str, quoted: bool) -> Result<Box<dyn Query>> {
        let clean: String = value
            .chars()
            .map(|c| if c == '"' || c == '\\' { ' ' } else { c })
            .collect();
        let text = if quoted {
            format!("{path}:\"{clean}\"")
        } else {
            format!("{path}:{clean}")
        };
        let parser = QueryParser::for_index(&self.view.index, vec![self.fields().msg]);
        parser
            .parse_query(&text)
            .map_err(|e| bad(format!("{path}: {e}")))
    }

    fn term(&self, field: &str, v: &Value) -> Result<Box<dyn Query>> {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(bad(format!("term on {field}: unsupported value {other}"))),
        };
        let exact =
            |t: Term| -> Box<dyn Query> { Box::new(TermQuery::new(t, IndexRecordOption::Basic)) };
        match target(field) {
            Target::Keyword(n) => Ok(exact(Term::from_field_text(self.field(n)?, &text))),
            Target::Id => Ok(exact(Term::from_field_text(self.fields().es_id, &text))),
            Target::Text(n) if n == crate::schema::MSG => {
                Ok(crate::msg::term_query(self.fields(), &text.to_lowercase()))
            }
            Target::Text(n) => Ok(exact(Term::from_field_text(
                self.field(n)?,
                &text.to_lowercase(),
            ))),
            Target::Json(path) => {
                self.parse_json_field(&path, &text, matches!(v, Value::String(_)))
            }
            Target::Ts | Target::F64(_) | Target::U64(_) => {
                let b = json!({ "gte": v, "lte": v });
                self.range(field, &b)
            }
        }
    }

    fn text_match(
        &self,
        field: &str,
        v: &Value,
        phrase: bool,
        and: bool,
    ) -> Result<Box<dyn Query>> {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(bad(format!("match on {field}: unsupported value {other}"))),
        };
        match target(field) {
            Target::Text(n) if n == crate::schema::MSG => {
                // Words and ids live in two fields (see `crate::msg`).
                let toks = crate::msg::tokens(&text);
                if toks.is_empty() {
                    return Ok(Box::new(BooleanQuery::new(vec![])));
                }
                if phrase && toks.len() > 1 {
                    if let Some(q) = crate::msg::id_phrase(self.fields(), &toks, 0, false)? {
                        return Ok(q);
                    }
                    let terms = toks
                        .iter()
                        .map(|(_, t)| Term::from_field_text(self.fields().msg, t))
                        .collect();
                    return Ok(Box::new(PhraseQuery::new(terms)));
                }
                let parts: Vec<Box<dyn Query>> = toks
                    .iter()
                    .map(|(_, t)| crate::msg::term_query(self.fields(), t))
                    .collect();
                Ok(Box::new(if and || phrase {
                    BooleanQuery::intersection(parts)
                } else {
                    BooleanQuery::union(parts)
                }))
            }
            Target::Text(n) => {
                let f = self.field(n)?;
                let mut tokenizer = self.view.index.tokenizer_for_field(f)?;
                let mut stream = tokenizer.token_stream(&text);
                let mut terms = Vec::new();
                while let Some(t) = stream.next() {
                    terms.push(Term::from_field_text(f, &t.text));
                }
                if terms.is_empty() {
                    return Ok(Box::new(BooleanQuery::new(vec![])));
                }
                if phrase && terms.len() > 1 {
                    return Ok(Box::new(PhraseQuery::new(terms)));
                }
                let parts: Vec<Box<dyn Query>> = terms
                    .into_iter()
                    .map(|t| {
                        Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)) as Box<dyn Query>
                    })
                    .collect();
                Ok(Box::new(if and || phrase {
                    BooleanQuery::intersection(parts)
                } else {
                    BooleanQuery::union(parts)
                }))
            }
            Target::Json(path) => self.parse_json_field(&path, &text, true),
            _ => self.term(field, v),
        }
    }

    fn range(&self, field: &str, body: &Value) -> Result<Box<dyn Query>> {
        let obj = body
            .as_object()
            .ok_or_else(|| bad(format!("range on {field} needs an object")))?;
        let now = Utc::now();
        let tgt = target(field);
        if tgt == Target::Ts {
            return self.ts_range(field, obj, now);
        }
        let to_term = |v: &Value| -> Result<Term> {
            match &tgt {
                Target::F64(n) => {
                    let x = v
                        .as_f64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                        .ok_or_else(|| bad(format!("range on {field}: {v} is not a number")))?;
                    Ok(Term::from_field_f64(self.field(n)?, x))
                }
                Target::U64(n) => {
                    let x = v
                        .as_f64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                        .ok_or_else(|| bad(format!("range on {field}: {v} is not a number")))?;
                    Ok(Term::from_field_u64(
                        self.field(n)?,
                        x.max(0.0).round() as u64,
                    ))
                }
                Target::Keyword(n) => Ok(Term::from_field_text(
                    self.field(n)?,
                    v.as_str()
                        .ok_or_else(|| bad(format!("range on {field}: {v} is not a string")))?,
                )),
                other => Err(bad(format!(
                    "range on {field} ({other:?}) is not supported"
                ))),
            }
        };
        let mut lower = Bound::Unbounded;
        let mut upper = Bound::Unbounded;
        for (k, v) in obj {
            match k.as_str() {
                "gte" | "from" => lower = Bound::Included(to_term(v)?),
                "gt" => lower = Bound::Excluded(to_term(v)?),
                "lte" | "to" => upper = Bound::Included(to_term(v)?),
                "lt" => upper = Bound::Excluded(to_term(v)?),
                "format" | "time_zone" | "boost" | "include_lower" | "include_upper" => {}
                other => return Err(bad(format!("range on {field}: unknown key {other:?}"))),
            }
        }
        Ok(Box::new(RangeQuery::new(lower, upper)))
    }

    /// A range on `@timestamp`, as the native API's time range: whole segments
    /// inside or outside it are decided from their smallest and largest `ts`
    /// (what Kibana's time picker sends on every search). `ts` has whole
    /// microseconds, so every bound becomes an inclusive one on a whole microsecond.
    fn ts_range(
        &self,
        field: &str,
        obj: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<Box<dyn Query>> {
        let to_time = |v: &Value| -> Result<DateTime<Utc>> {
            match v {
                Value::Number(n) => n
                    .as_i64()
                    .and_then(DateTime::from_timestamp_millis)
                    .ok_or_else(|| bad(format!("range on {field}: {n} is not epoch milliseconds"))),
                Value::String(s) => {
                    // Date math rounding (`now-1d/d`) is not supported; the
                    // unrounded time is close enough for a bound.
                    let s = s.split('/').next().unwrap_or(s);
                    parse_time("range", s, now)
                }
                other => Err(bad(format!("range on {field}: bad bound {other}"))),
            }
        };
        let (mut start, mut end) = (None, None);
        for (k, v) in obj {
            let t = || to_time(v).map(|t| inclusive_micros(k, t));
            match k.as_str() {
                "gte" | "from" | "gt" => start = Some(t()?),
                "lte" | "to" | "lt" => end = Some(t()?),
                "format" | "time_zone" | "boost" | "include_lower" | "include_upper" => {}
                other => return Err(bad(format!("range on {field}: unknown key {other:?}"))),
            }
        }
        let at = |micros: Option<i64>| -> Result<Option<DateTime<Utc>>> {
            micros
                .map(|m| {
                    DateTime::from_timestamp_micros(m)
                        .ok_or_else(|| bad(format!("range on {field}: a bound is out of range")))
                })
                .transpose()
        };
        let (start, end) = (at(start)?, at(end)?);
        Ok(
            time_range(self.fields(), self.view.parts.columns(), start, end)
                .unwrap_or_else(|| Box::new(AllQuery)),
        )
    }

    /// Restricts to the documents bulk-loaded under the given index names, unless
    /// they mean everything.
    pub(super) fn index_filter(&self, index: &str) -> Option<Box<dyn Query>> {
        let names: Vec<&str> = index.split(',').map(str::trim).collect();
        if names
            .iter()
            .any(|n| n.is_empty() || n.contains('*') || *n == "_all" || *n == "sandtrail")
        {
            return None;
        }
        let source = self.fields().keyword("source")?;
        let parts = names
            .iter()
            .map(|n| {
                Box::new(TermQuery::new(
                    Term::from_field_text(source, &format!("es:{n}")),
                    IndexRecordOption::Basic,
                )) as Box<dyn Query>
            })
            .collect();
        Some(Box::new(BooleanQuery::union(parts)))
    }
}

/// Whether `sort` asks for oldest first; only the timestamp can be sorted on.
pub(super) fn parse_sort(sort: Option<&Value>) -> Result<bool> {
    let entries = match sort {
        None => return Ok(false),
        Some(Value::Array(a)) => a.clone(),
        Some(one) => vec![one.clone()],
    };
    let mut asc = None;
    for e in entries {
        let (field, order) = match &e {
            Value::String(s) => (s.clone(), None),
            Value::Object(o) if o.len() == 1 => {
                let (k, v) = o.iter().next().expect("one entry");
                let order = match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(opts) => {
                        opts.get("order").and_then(Value::as_str).map(String::from)
                    }
                    _ => None,
                };
                (k.clone(), order)
            }
            other => return Err(bad(format!("bad sort entry {other}"))),
        };
        match target(&field) {
            Target::Ts => {
                let is_asc = match order.as_deref() {
                    None | Some("desc") => false,
                    Some("asc") => true,
                    Some(o) => return Err(bad(format!("sort order {o:?}: expected asc or desc"))),
                };
                asc.get_or_insert(is_asc);
            }
            _ if field == "_score" || field == "_doc" => {}
            _ => {
                return Err(bad(format!(
                    "sort on {field:?} is not supported: only @timestamp (or ts)"
                )))
            }
        }
    }
    Ok(asc.unwrap_or(false))
}

/// The cursor of `search_after`: our encoded cursor when the hit's `sort` is sent
/// back whole, else the epoch milliseconds of its first value.
pub(super) fn parse_search_after(v: Option<&Value>, asc: bool) -> Result<Option<Cursor>> {
    let Some(v) = v else { return Ok(None) };
    let arr = v
        .as_array()
        .ok_or_else(|| bad("search_after must be the sort array of a hit"))?;
    if let Some(c) = arr.iter().find_map(Value::as_str) {
        return Cursor::decode(c).map(Some);
    }
    let ms = arr
        .first()
        .and_then(Value::as_i64)
        .ok_or_else(|| bad(format!("search_after {v}: expected [epoch_millis, cursor]")))?;
    Ok(Some(Cursor {
        ts_micros: ms.saturating_mul(1000),
        uid: if asc { u64::MAX } else { 0 },
    }))
}

/// The whole microsecond a range bound `op` on `t` includes last (`lte`, `lt`) or
/// first (`gte`, `gt`): `ts` is stored in whole microseconds, so `lt t` is `lte`
/// the microsecond before `t` rounded up, and `gt t` is `gte` the one after `t`
/// rounded down.
fn inclusive_micros(op: &str, t: DateTime<Utc>) -> i64 {
    let floor = t.timestamp_micros();
    let ceil = floor + i64::from(!t.timestamp_subsec_nanos().is_multiple_of(1000));
    match op {
        "gt" => floor + 1,
        "gte" | "from" => ceil,
        "lt" => ceil - 1,
        _ => floor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_get_our_field_names() {
        let schema = crate::schema::Fields::new().schema;
        let known = |name: &str| schema.get_field(name).is_ok();
        let rw = |q: &str| rewrite_query_string(q, known);
        assert_eq!(
            rw("service.name:fib AND -log.level:debug (host.name:a OR message:\"x y\")"),
            "app:fib AND -level:debug (host:a OR msg:\"x y\")"
        );
        // What has no ECS place is in `fields`, under the name the client sent.
        assert_eq!(rw("myservice.name:x"), "fields.myservice.name:x");
        assert_eq!(
            rw("user.name:alice AND (labels.env:prod OR -x:1)"),
            "fields.user.name:alice AND (fields.labels.env:prod OR -fields.x:1)"
        );
        // Our own names, `fields.` paths, quoted text, escapes and values are left.
        for q in [
            "app:fib AND latency_ms:>250 AND status:[500 TO 599]",
            "fields.user:alice",
            "msg:\"a user.name:b\" AND ts:>2025-01-01T10:00:00Z",
            "\"quoted x:y\" tail",
            "a\\:b",
            "timed out",
        ] {
            assert_eq!(rw(q), q, "{q}");
        }
    }

    proptest::proptest! {
        /// A document at whole microsecond `d` is in `op t` exactly when its time
        /// compares so with `t`, nanoseconds and negative times included.
        #[test]
        fn range_bounds_round_to_the_stored_microseconds(
            t_nanos in -2_000_000_000i64..2_000_000_000,
            d in -2_000_000i64..2_000_000,
        ) {
            let t = DateTime::from_timestamp_nanos(t_nanos);
            let d_nanos = d * 1000;
            for (op, holds) in [
                ("gt", d_nanos > t_nanos),
                ("gte", d_nanos >= t_nanos),
                ("lt", d_nanos < t_nanos),
                ("lte", d_nanos <= t_nanos),
            ] {
                let bound = inclusive_micros(op, t);
                let inside = if op.starts_with('g') { d >= bound } else { d <= bound };
                proptest::prop_assert_eq!(inside, holds, "{} {} (bound {})", op, t_nanos, bound);
            }
        }
    }

    #[test]
    fn sorts_parse() {
        assert!(!parse_sort(None).unwrap());
        assert!(parse_sort(Some(&json!([{"@timestamp": {"order": "asc"}}]))).unwrap());
        assert!(!parse_sort(Some(&json!(["@timestamp"]))).unwrap());
        assert!(parse_sort(Some(&json!([{"message": "asc"}]))).is_err());
    }
}
