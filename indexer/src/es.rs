//! An Elasticsearch-compatible subset, so existing shippers and clients work unchanged:
//! `POST /_bulk` and `/{index}/_bulk` (`index`/`create`), and `GET|POST
//! /{index}/_search` with the common query DSL (`query_string`, `bool`, `term`,
//! `terms`, `range`, `match`, `match_phrase`, `exists`, `match_all`), `sort` on the
//! timestamp, `size`/`from`, `search_after`, and `date_histogram`, `terms`,
//! `percentiles` and `avg` (plus `min`/`max`/`sum`/`value_count`) aggregations;
//! `GET|POST /{index}/_count` with the same queries.
//!
//! Documents are not stored as sent: each is mapped onto a `LogRecord` (ECS names
//! such as `@timestamp`, `message`, `host.name`, `service.name`, `log.level` and
//! `trace.id` onto the record's own fields, everything else into `fields`, flattened
//! to dotted keys) and hits are rendered back in ECS shape. The trade-off: searches
//! and aggregations are as fast as the native API (the same schema) and a document
//! indexed through `_bulk` shows up in the UI like any other log, but a client gets
//! back an ECS rendering of its document, not its exact bytes, and there is one
//! index: the index name only selects the documents bulk-loaded under that name
//! (wildcards, `_all` and `sandtrail` mean everything).
//!
//! `_id` is honoured for dedup: a document whose `_id` is already indexed is not
//! indexed again (`create` answers 409 like Elasticsearch, `index` answers 200
//! `noop`, since logs are immutable here). Documents without `_id` get a generated one.

use crate::analytics::percentile_of_sorted;
use crate::collect::{
    ByKey, DateBuckets, KeywordCounts, NewestTop, NumericColumn, NumericValues, TimeOrder,
};
use crate::error::{Error, EsError, Result};
use crate::guard::Guards;
use crate::highlight::{self, FragmentOptions};
use crate::inflate::gunzip_capped;
use crate::query::{all_of, before_cursor, parse_time, time_range, user_query, Cursor};
use crate::schema::{Fields, RecordReader, ES_ID, KEYWORDS, LATENCY, TS};
use crate::search::IndexView;
use crate::writer::{BulkDoc, BulkOutcome};
use crate::Indexer;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query as UrlQuery, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use protocol::{Level, LogRecord, Stream};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{
    AllQuery, BooleanQuery, ExistsQuery, Occur, PhraseQuery, Query, QueryParser, RangeQuery,
    TermQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::{TantivyDocument, Term};

/// Default and largest `size` (and `from + size`) of a search.
pub const DEFAULT_SIZE: usize = 10;
pub const MAX_WINDOW: usize = 10_000;
/// Default `percents` of a `percentiles` aggregation, as in Elasticsearch.
pub const DEFAULT_PERCENTS: [f64; 7] = [1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0];
/// Most buckets a `date_histogram` may produce.
pub const MAX_BUCKETS: i64 = 65_536;

/// The Elasticsearch routes; merged next to the native ones by [`crate::router`],
/// behind the same [`Guards`] but refusing in Elasticsearch's error shape.
pub(crate) fn router(indexer: Indexer, guards: &Guards) -> Router {
    use axum::middleware::from_fn_with_state;
    use protocol::auth::Role;
    use protocol::http::{gate, limit, Gate};
    let body_limit = indexer.config().max_body_bytes;
    let gate_for = |needs| Gate::new(guards.keyring.clone(), needs, es_refuse);
    let bulk = Router::new()
        .route(
            "/_bulk",
            post(bulk_all)
                .put(bulk_all)
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .route(
            "/{index}/_bulk",
            post(bulk_index)
                .put(bulk_index)
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .route_layer(from_fn_with_state(
            guards.ingest.with_reject(es_shed),
            limit,
        ))
        .route_layer(from_fn_with_state(gate_for(&[Role::Agent]), gate));
    let search = Router::new()
        .route("/_search", post(search_all).get(search_all))
        .route("/{index}/_search", post(search_index).get(search_index))
        .route("/_count", post(count_all).get(count_all))
        .route("/{index}/_count", post(count_index).get(count_index))
        .route_layer(from_fn_with_state(
            guards.search.with_reject(es_shed),
            limit,
        ))
        .route_layer(from_fn_with_state(gate_for(&[Role::Read]), gate));
    // Cluster health tells no log line: any valid token may ask (shippers probe it).
    let health = Router::new()
        .route("/_cat/health", axum::routing::get(cat_health))
        .route_layer(from_fn_with_state(
            gate_for(&[Role::Read, Role::Agent]),
            gate,
        ));
    bulk.merge(search).merge(health).with_state(indexer)
}

fn es_refuse(e: protocol::auth::AuthError) -> axum::response::Response {
    axum::response::IntoResponse::into_response(EsError(Error::from(e)))
}

fn es_shed(b: protocol::http::Busy) -> axum::response::Response {
    axum::response::IntoResponse::into_response(EsError(Error::from(b)))
}

// ---------------------------------------------------------------- bulk

/// A failed bulk item, in Elasticsearch's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemError {
    pub status: u16,
    pub kind: &'static str,
    pub reason: String,
}

/// One action of a bulk body.
#[derive(Debug)]
pub struct BulkItem {
    /// `index` or `create` (or the unsupported action, echoed back).
    pub action: String,
    pub index: String,
    pub id: String,
    pub doc: std::result::Result<LogRecord, ItemError>,
}

static GENERATED_IDS: AtomicU64 = AtomicU64::new(0);

/// A unique-enough id for documents sent without one: time plus a process counter.
fn generate_id() -> String {
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    let n = GENERATED_IDS.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}{n:06x}")
}

/// Splits a bulk body into items. A malformed action line (or a missing document
/// line) fails the whole request with the line number, as Elasticsearch does; a
/// document that cannot be mapped fails only its item.
pub fn parse_bulk(body: &[u8], default_index: Option<&str>) -> Result<Vec<BulkItem>> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Error::BadBody(format!("bulk body is not UTF-8: {e}")))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let mut items = Vec::new();
    while let Some((n, line)) = lines.next() {
        let lineno = n + 1;
        let action: Map<String, Value> = serde_json::from_str(line).map_err(|e| {
            Error::BadBody(format!("bulk line {lineno}: invalid action {line:?}: {e}"))
        })?;
        let (name, meta) = match action.iter().next() {
            Some((k, v)) if action.len() == 1 => (k.clone(), v.clone()),
            _ => {
                return Err(Error::BadBody(format!(
                    "bulk line {lineno}: expected one action (index, create) in {line:?}"
                )))
            }
        };
        let index = meta
            .get("_index")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| default_index.map(String::from))
            .unwrap_or_default();
        let id = match meta.get("_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => generate_id(),
        };
        let needs_doc = name != "delete";
        let doc_line = if needs_doc {
            Some(lines.next().ok_or_else(|| {
                Error::BadBody(format!(
                    "bulk line {lineno}: action {name:?} is missing its document line"
                ))
            })?)
        } else {
            None
        };
        let doc = match (name.as_str(), doc_line) {
            ("index" | "create", Some((dn, dl))) if !index.is_empty() => {
                match serde_json::from_str::<Value>(dl) {
                    Ok(Value::Object(obj)) => {
                        record_from_es(&index, obj).map_err(|reason| ItemError {
                            status: 400,
                            kind: "mapper_parsing_exception",
                            reason: format!("line {}: {reason}", dn + 1),
                        })
                    }
                    Ok(_) => Err(ItemError {
                        status: 400,
                        kind: "mapper_parsing_exception",
                        reason: format!("line {}: the document is not a JSON object", dn + 1),
                    }),
                    Err(e) => Err(ItemError {
                        status: 400,
                        kind: "mapper_parsing_exception",
                        reason: format!("line {}: invalid JSON: {e}", dn + 1),
                    }),
                }
            }
            ("index" | "create", _) => Err(ItemError {
                status: 400,
                kind: "action_request_validation_exception",
                reason: "index is missing: give _index or use /{index}/_bulk".into(),
            }),
            (other, _) => Err(ItemError {
                status: 400,
                kind: "action_request_validation_exception",
                reason: format!(
                    "action {other:?} is not supported: logs are append-only (index, create)"
                ),
            }),
        };
        items.push(BulkItem {
            action: name,
            index,
            id,
            doc,
        });
    }
    Ok(items)
}

/// Flattens nested objects into dotted keys (`{"host":{"name":"a"}}` →
/// `host.name`); arrays and scalars are leaves.
fn flatten(prefix: &str, obj: Map<String, Value>, out: &mut BTreeMap<String, Value>) {
    for (k, v) in obj {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Object(inner) => flatten(&key, inner, out),
            other => {
                out.insert(key, other);
            }
        }
    }
}

/// Maps an ECS (or Sandtrail-shaped) document onto a record; the error names the
/// field and what was expected.
pub fn record_from_es(
    index: &str,
    doc: Map<String, Value>,
) -> std::result::Result<LogRecord, String> {
    let mut flat = BTreeMap::new();
    flatten("", doc, &mut flat);
    let mut take = |names: &[&str]| names.iter().find_map(|n| flat.remove(*n));
    fn string(name: &str, v: Value) -> std::result::Result<String, String> {
        match v {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(format!("field {name}: expected a string, got {other}")),
        }
    }
    let ts = match take(&["@timestamp", "ts", "timestamp"]) {
        None | Some(Value::Null) => Utc::now(),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| format!("field @timestamp: {n} is not epoch milliseconds"))?,
        Some(Value::String(s)) => parse_time("@timestamp", &s, Utc::now()).map_err(|_| {
            format!("field @timestamp: {s:?} is not an RFC 3339 time or epoch milliseconds")
        })?,
        Some(other) => return Err(format!("field @timestamp: expected a time, got {other}")),
    };
    let opt_string =
        |v: Option<Value>, name: &str| -> std::result::Result<Option<String>, String> {
            v.filter(|v| !v.is_null())
                .map(|v| string(name, v))
                .transpose()
        };
    let msg = opt_string(take(&["message", "msg"]), "message")?.unwrap_or_default();
    let host = opt_string(
        take(&["host.name", "host.hostname", "host", "hostname"]),
        "host.name",
    )?
    .unwrap_or_default();
    let app = opt_string(take(&["service.name", "app"]), "service.name")?.unwrap_or_default();
    let task = opt_string(take(&["task", "service.instance.id"]), "task")?.unwrap_or_default();
    let mut rec = LogRecord {
        ts,
        host,
        app,
        task,
        instance: 0,
        stream: Stream::Stdout,
        level: None,
        msg,
        fields: BTreeMap::new(),
        trace_id: None,
        span_id: None,
        parent_span_id: None,
        latency_ms: None,
        status: None,
        method: None,
        path: None,
        peer_host: None,
        peer_app: None,
        source: format!("es:{index}"),
        offset: 0,
    };
    if let Some(level) = opt_string(take(&["log.level", "level"]), "log.level")? {
        match Level::parse(&level) {
            Some(l) => rec.level = Some(l),
            // Keep what cannot be mapped rather than drop it.
            None => {
                rec.fields.insert("log.level".into(), Value::String(level));
            }
        }
    }
    if let Some(s) = opt_string(take(&["stream", "log.origin.stream"]), "stream")? {
        rec.stream = match s.as_str() {
            "stderr" => Stream::Stderr,
            "access" => Stream::Access,
            _ => Stream::Stdout,
        };
    }
    rec.trace_id = opt_string(take(&["trace.id", "trace_id"]), "trace.id")?;
    rec.span_id = opt_string(take(&["span.id", "span_id"]), "span.id")?;
    rec.parent_span_id = opt_string(take(&["parent.id", "parent_span_id"]), "parent.id")?;
    rec.method = opt_string(
        take(&["http.request.method", "method"]),
        "http.request.method",
    )?;
    rec.path = opt_string(take(&["url.path", "path"]), "url.path")?;
    rec.peer_host = opt_string(take(&["peer_host"]), "peer_host")?;
    rec.peer_app = opt_string(take(&["peer_app"]), "peer_app")?;
    match take(&["latency_ms"]) {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => rec.latency_ms = n.as_f64(),
        Some(other) => return Err(format!("field latency_ms: expected a number, got {other}")),
    }
    match take(&["http.response.status_code", "status"]) {
        None | Some(Value::Null) => {}
        Some(v) => {
            let code = v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .and_then(|c| u16::try_from(c).ok())
                .ok_or_else(|| {
                    format!("field http.response.status_code: expected an HTTP status, got {v}")
                })?;
            rec.status = Some(code);
        }
    }
    match take(&["instance"]) {
        None | Some(Value::Null) => {}
        Some(v) => {
            rec.instance = v
                .as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .ok_or_else(|| format!("field instance: expected a small integer, got {v}"))?;
        }
    }
    // `fields.x` from a Sandtrail-shaped document and everything else land in fields.
    for (k, v) in flat {
        let key = k.strip_prefix("fields.").map(String::from).unwrap_or(k);
        rec.fields.insert(key, v);
    }
    Ok(rec)
}

/// The ECS rendering of a record, as search hits return it.
pub fn ecs_source(rec: &LogRecord) -> Value {
    let mut o = Map::new();
    o.insert(
        "@timestamp".into(),
        json!(rec.ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    );
    o.insert("message".into(), json!(rec.msg));
    o.insert("host".into(), json!({ "name": rec.host }));
    o.insert("service".into(), json!({ "name": rec.app }));
    let mut log = Map::new();
    if let Some(l) = rec.level {
        log.insert("level".into(), json!(l.as_str()));
    }
    o.insert("log".into(), Value::Object(log));
    if let Some(t) = &rec.trace_id {
        o.insert("trace".into(), json!({ "id": t }));
    }
    if let Some(s) = &rec.span_id {
        o.insert("span".into(), json!({ "id": s }));
    }
    o.insert("task".into(), json!(rec.task));
    o.insert("stream".into(), json!(rec.stream.as_str()));
    for (k, v) in [
        ("latency_ms", rec.latency_ms.map(|l| json!(l))),
        ("status", rec.status.map(|s| json!(s))),
        ("method", rec.method.as_ref().map(|s| json!(s))),
        ("path", rec.path.as_ref().map(|s| json!(s))),
    ] {
        if let Some(v) = v {
            o.insert(k.into(), v);
        }
    }
    for (k, v) in &rec.fields {
        o.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Value::Object(o)
}

/// What every Elasticsearch handler answers: errors in Elasticsearch's shape.
type EsResult<T> = std::result::Result<T, EsError>;

async fn bulk_all(
    State(ix): State<Indexer>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> EsResult<Json<Value>> {
    Ok(bulk(ix, None, headers, body).await?)
}

async fn bulk_index(
    State(ix): State<Indexer>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> EsResult<Json<Value>> {
    Ok(bulk(ix, Some(index), headers, body).await?)
}

async fn bulk(
    ix: Indexer,
    index: Option<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    let started = Instant::now();
    let max = ix.config().max_body_bytes;
    let body = body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            Error::BodyTooLarge { limit: max }
        } else {
            Error::BadBody(rejection.body_text())
        }
    })?;
    let gzipped = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let factor = if gzipped { 5 } else { 2 };
    let _room = ix.reserve(body.len().saturating_mul(factor).min(max.saturating_mul(2)))?;
    let items = tokio::task::spawn_blocking(move || {
        let plain = if gzipped {
            gunzip_capped(&body, max)?
        } else {
            body.to_vec()
        };
        parse_bulk(&plain, index.as_deref())
    })
    .await
    .map_err(|e| Error::Internal(format!("bulk decode task failed: {e}")))??;

    let docs: Vec<BulkDoc> = items
        .iter()
        .filter_map(|it| {
            it.doc.as_ref().ok().map(|rec| BulkDoc {
                record: rec.clone(),
                id: Some(it.id.clone()),
            })
        })
        .collect();
    let mut outcomes = ix.bulk(docs).await?.into_iter();
    let mut errors = false;
    let rendered: Vec<Value> = items
        .into_iter()
        .map(|it| {
            let mut r = json!({ "_index": it.index, "_id": it.id });
            let (status, extra) = match it.doc {
                Err(e) => (
                    e.status,
                    json!({ "error": { "type": e.kind, "reason": e.reason } }),
                ),
                Ok(_) => match outcomes.next() {
                    Some(BulkOutcome::Created) => {
                        (201, json!({ "result": "created", "_version": 1 }))
                    }
                    Some(BulkOutcome::Duplicate) if it.action == "create" => (
                        409,
                        json!({ "error": {
                            "type": "version_conflict_engine_exception",
                            "reason": format!("[{}]: document already exists", it.id),
                        }}),
                    ),
                    Some(BulkOutcome::Duplicate) => {
                        (200, json!({ "result": "noop", "_version": 1 }))
                    }
                    None => (
                        500,
                        json!({ "error": { "type": "internal", "reason": "missing outcome" } }),
                    ),
                },
            };
            errors |= status >= 300;
            if let (Value::Object(r), Value::Object(extra)) = (&mut r, extra) {
                r.extend(extra);
                r.insert("status".into(), json!(status));
                r.insert(
                    "_shards".into(),
                    json!({ "total": 1, "successful": u8::from(status < 300), "failed": 0 }),
                );
            }
            json!({ it.action: r })
        })
        .collect();
    Ok(Json(json!({
        "took": started.elapsed().as_millis() as u64,
        "errors": errors,
        "items": rendered,
    })))
}

/// `GET /_cat/health`: what shippers such as rsyslog's omelasticsearch probe before
/// sending. One node, always green while it answers.
async fn cat_health(
    UrlQuery(params): UrlQuery<BTreeMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let epoch = Utc::now().timestamp();
    if params.get("format").map(String::as_str) == Some("json") {
        return Json(json!([{
            "epoch": epoch.to_string(), "cluster": "sandtrail", "status": "green",
            "node.total": "1", "node.data": "1", "shards": "1", "pri": "1",
        }]))
        .into_response();
    }
    format!(
        "{epoch} {} sandtrail green 1 1 1 1 0 0 0 0 - 100.0%\n",
        Utc::now().format("%H:%M:%S")
    )
    .into_response()
}

// ---------------------------------------------------------------- search

/// URI parameters of `_search` and `_count`.
#[derive(Debug, Default, Deserialize)]
pub struct UriParams {
    pub q: Option<String>,
    pub size: Option<String>,
    pub from: Option<String>,
}

type Params = std::result::Result<UrlQuery<UriParams>, QueryRejection>;
type Body = std::result::Result<Bytes, BytesRejection>;

async fn search_all(
    State(ix): State<Indexer>,
    params: Params,
    body: Body,
) -> EsResult<Json<Value>> {
    Ok(es_search(ix, "_all".into(), params, body).await?)
}

async fn search_index(
    State(ix): State<Indexer>,
    Path(index): Path<String>,
    params: Params,
    body: Body,
) -> EsResult<Json<Value>> {
    Ok(es_search(ix, index, params, body).await?)
}

async fn count_all(State(ix): State<Indexer>, params: Params, body: Body) -> EsResult<Json<Value>> {
    Ok(es_count(ix, "_all".into(), params, body).await?)
}

async fn count_index(
    State(ix): State<Indexer>,
    Path(index): Path<String>,
    params: Params,
    body: Body,
) -> EsResult<Json<Value>> {
    Ok(es_count(ix, index, params, body).await?)
}

/// `_count`: the total of a search, for clients that ask for nothing else
/// (opensearch-py's `count`, scripts checking how much arrived).
async fn es_count(ix: Indexer, index: String, params: Params, body: Body) -> Result<Json<Value>> {
    let (params, mut request) = search_request(params, body)?;
    if let Some(name) = [("size", &params.size), ("from", &params.from)]
        .iter()
        .find_map(|(name, v)| v.is_some().then_some(*name))
    {
        return Err(bad(format!("_count takes no {name}")));
    }
    let obj = request
        .as_object_mut()
        .ok_or_else(|| Error::BadBody("count body must be a JSON object".into()))?;
    if let Some(key) = obj.keys().find(|k| *k != "query") {
        return Err(bad(format!("_count takes only a query, not {key:?}")));
    }
    obj.insert("size".into(), json!(0));
    let resp = ix
        .with_view(move |view| run_search(view, &index, &request))
        .await?;
    Ok(Json(json!({
        "count": resp.pointer("/hits/total/value").cloned().unwrap_or(json!(0)),
        "_shards": { "total": 1, "successful": 1, "skipped": 0, "failed": 0 },
    })))
}

/// The URL parameters and the JSON body of a `_search` or `_count`, with `?q=`
/// already turned into the body's query.
fn search_request(params: Params, body: Body) -> Result<(UriParams, Value)> {
    let UrlQuery(params) = params.map_err(|r| Error::BadParam {
        name: "query string",
        value: r.body_text(),
        expected: "q, size and from".into(),
    })?;
    let body = body.map_err(|r| Error::BadBody(r.body_text()))?;
    let mut request: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::BadBody(format!("search body is not JSON: {e}")))?
    };
    if let Some(obj) = request.as_object_mut() {
        if let Some(q) = params.q.as_ref().filter(|q| !q.is_empty()) {
            obj.insert("query".into(), json!({ "query_string": { "query": q } }));
        }
    }
    Ok((params, request))
}

async fn es_search(ix: Indexer, index: String, params: Params, body: Body) -> Result<Json<Value>> {
    let started = Instant::now();
    let (params, mut request) = search_request(params, body)?;
    if let Some(obj) = request.as_object_mut() {
        for (name, v) in [("size", params.size), ("from", params.from)] {
            if let Some(v) = v {
                let n: u64 = v.parse().map_err(|_| Error::BadParam {
                    name: if name == "size" { "size" } else { "from" },
                    value: v.clone(),
                    expected: "a non-negative integer".into(),
                })?;
                obj.insert(name.into(), json!(n));
            }
        }
    } else {
        return Err(Error::BadBody("search body must be a JSON object".into()));
    }
    let mut resp = ix
        .with_view(move |view| run_search(view, &index, &request))
        .await?;
    if let Value::Object(o) = &mut resp {
        o.insert("took".into(), json!(started.elapsed().as_millis() as u64));
    }
    Ok(Json(resp))
}

fn bad(reason: impl Into<String>) -> Error {
    Error::BadQuery {
        query: "(query DSL)".into(),
        reason: reason.into(),
    }
}

/// Where an Elasticsearch field name lives in our schema.
#[derive(Debug, Clone, PartialEq)]
enum Target {
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

fn target(name: &str) -> Target {
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
/// `app:fib`), at token starts only.
fn rewrite_query_string(q: &str) -> String {
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
    'outer: while !rest.is_empty() {
        if at_token_start {
            for (from, to) in NAMES {
                if let Some(after) = rest.strip_prefix(from) {
                    out.push_str(to);
                    rest = after;
                    at_token_start = false;
                    continue 'outer;
                }
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
        at_token_start = c.is_whitespace() || matches!(c, '(' | '-' | '+' | '!');
    }
    out
}

struct Builder<'a> {
    view: &'a IndexView,
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

    fn query(&self, q: &Value) -> Result<Box<dyn Query>> {
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
                user_query(
                    &self.view.index,
                    self.fields(),
                    &rewrite_query_string(text),
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
    fn index_filter(&self, index: &str) -> Option<Box<dyn Query>> {
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

/// Everything strictly newer than the cursor in the (ts, uid) order.
fn after_cursor(fields: &Fields, c: Cursor) -> Box<dyn Query> {
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

/// Whether `sort` asks for oldest first; only the timestamp can be sorted on.
fn parse_sort(sort: Option<&Value>) -> Result<bool> {
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

fn parse_search_after(v: Option<&Value>, asc: bool) -> Result<Option<Cursor>> {
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

/// What a `highlight` request asks of `msg`, the one field we highlight.
#[derive(Debug, Clone, PartialEq)]
struct HighlightSpec {
    /// The field name as the client spelled it (`message`, `msg`), the key of each
    /// hit's `highlight`.
    key: String,
    opts: FragmentOptions,
}

/// Elasticsearch's defaults: 5 fragments of 100 characters, `<em>` tags.
const ES_FRAGMENT_SIZE: usize = 100;
const ES_FRAGMENTS: usize = 5;

/// `{"fields": {"message": {..}}, "pre_tags": [..], "post_tags": [..],
/// "fragment_size": n, "number_of_fragments": n}`, options per field or for all;
/// `fields` may also be a list of one-field objects. Fields other than the message
/// (or `*`) are accepted and not highlighted. Fragments are always HTML-escaped (as
/// with Elasticsearch's `"encoder": "html"`): log text is untrusted.
fn parse_highlight(v: Option<&Value>) -> Result<Option<HighlightSpec>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let obj = v
        .as_object()
        .ok_or_else(|| bad(format!("highlight must be an object, got {v}")))?;
    let fields: Vec<(String, Value)> = match obj.get("fields") {
        Some(Value::Object(f)) => f.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|f| f.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect(),
        other => {
            return Err(bad(format!(
                "highlight needs \"fields\", an object of field names, got {}",
                other.map_or("nothing".to_string(), Value::to_string)
            )))
        }
    };
    let Some((name, options)) = fields
        .into_iter()
        .find(|(name, _)| name == "*" || target(name) == Target::Text("msg"))
    else {
        return Ok(None);
    };
    let option = |key: &str| options.get(key).or_else(|| obj.get(key));
    let count = |key: &str, default: usize| -> Result<usize> {
        match option(key) {
            None | Some(Value::Null) => Ok(default),
            Some(n) => n.as_u64().map(|n| n as usize).ok_or_else(|| {
                bad(format!(
                    "highlight {key} must be a non-negative integer, got {n}"
                ))
            }),
        }
    };
    let tag = |key: &str, default: &str| -> Result<String> {
        match option(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::Array(tags)) => match tags.first() {
                None => Ok(default.to_string()),
                Some(Value::String(t)) => Ok(t.clone()),
                Some(other) => Err(bad(format!(
                    "highlight {key} must hold strings, got {other}"
                ))),
            },
            Some(Value::String(t)) => Ok(t.clone()),
            Some(other) => Err(bad(format!(
                "highlight {key} must be a list of strings, got {other}"
            ))),
        }
    };
    let number = count("number_of_fragments", ES_FRAGMENTS)?;
    let opts = FragmentOptions {
        // 0 fragments: the whole field, highlighted.
        size: if number == 0 {
            0
        } else {
            count("fragment_size", ES_FRAGMENT_SIZE)?
        },
        max: number,
        pre_tag: tag("pre_tags", highlight::PRE_TAG)?,
        post_tag: tag("post_tags", highlight::POST_TAG)?,
    };
    Ok(Some(HighlightSpec {
        key: if name == "*" { "message".into() } else { name },
        opts,
    }))
}

fn usize_param(req: &Value, name: &str, default: usize) -> Result<usize> {
    match req.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| bad(format!("{name} must be a non-negative integer, got {v}"))),
    }
}

/// Runs one `_search` request against the current reader; blocking.
pub fn run_search(view: &IndexView, index: &str, req: &Value) -> Result<Value> {
    let b = Builder { view };
    let mut parts = vec![match req.get("query") {
        None | Some(Value::Null) => Box::new(AllQuery) as Box<dyn Query>,
        Some(q) => b.query(q)?,
    }];
    parts.extend(b.index_filter(index));
    let matching = all_of(parts);
    let size = usize_param(req, "size", DEFAULT_SIZE)?;
    let from = usize_param(req, "from", 0)?;
    let window = from.saturating_add(size);
    if window > MAX_WINDOW {
        return Err(bad(format!(
            "from + size = {window} is more than {MAX_WINDOW}; use search_after to page deeper"
        )));
    }
    let asc = parse_sort(req.get("sort"))?;
    let cursor = parse_search_after(req.get("search_after"), asc)?;
    let mut highlight = parse_highlight(req.get("highlight"))?
        .map(|spec| -> Result<_> {
            let words = highlight::positive_terms(&*matching, &view.fields.msg_fields());
            let tokenizer = crate::schema::msg_tokenizer();
            Ok((spec, words, tokenizer))
        })
        .transpose()?;
    let searcher = view.searcher();
    let columns = view.parts.columns();
    let (total, top_hits) = if !asc && cursor.is_none() {
        // Newest first from the top, the common case (Kibana's Discover): the count
        // and the page in one pass, reading `_uid` only for contenders.
        let top = NewestTop {
            // Nothing to show: count only, without gathering `from` hits to drop.
            k: if size == 0 { 0 } else { window },
            columns: columns.clone(),
        };
        let (total, hits) = searcher.search(&*matching, &top)?;
        (total, hits.into_iter().skip(from).collect())
    } else {
        let total = searcher.search(&*matching, &Count)?;
        let page = match cursor {
            None => matching.box_clone(),
            Some(c) if asc => all_of(vec![matching.box_clone(), after_cursor(&view.fields, c)]),
            Some(c) => all_of(vec![matching.box_clone(), before_cursor(&view.fields, c)]),
        };
        let hits = if size > 0 {
            let top = TopDocs::with_limit(size)
                .and_offset(from)
                .order_by(ByKey::new(TimeOrder {
                    asc,
                    columns: columns.clone(),
                }));
            searcher.search(&*page, &top)?
        } else {
            Vec::new()
        };
        (total, hits)
    };
    let mut hits = Vec::new();
    if size > 0 {
        let mut records = RecordReader::new(&view.fields);
        // The `_id` column, opened once per segment like the record's own columns.
        let mut ids: std::collections::HashMap<u32, Option<tantivy::columnar::StrColumn>> =
            std::collections::HashMap::new();
        for ((k_ts, k_uid), addr) in top_hits {
            let (ts_micros, uid) = if asc {
                (k_ts.saturating_neg(), u64::MAX - k_uid)
            } else {
                (k_ts, k_uid)
            };
            let doc: TantivyDocument = searcher.doc(addr)?;
            let segment = searcher.segment_reader(addr.segment_ord);
            let rec = records.read(&doc, addr.segment_ord, segment, addr.doc_id)?;
            let ids_col = match ids.entry(addr.segment_ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(segment.fast_fields().str(ES_ID)?)
                }
            };
            let id = ids_col
                .as_ref()
                .and_then(|col| {
                    let ord = col.term_ords(addr.doc_id).next()?;
                    let mut s = String::new();
                    col.ord_to_str(ord, &mut s).ok()?.then_some(s)
                })
                .unwrap_or_else(|| format!("{uid:016x}"));
            let hit_index = rec
                .source
                .strip_prefix("es:")
                .unwrap_or("sandtrail")
                .to_string();
            let mut hit = json!({
                "_index": hit_index,
                "_id": id,
                "_score": null,
                "_source": ecs_source(&rec),
                "sort": [ts_micros.div_euclid(1000), Cursor { ts_micros, uid }.encode()],
            });
            if let Some((spec, words, tokenizer)) = &mut highlight {
                let ranges = highlight::match_ranges(tokenizer, words, &rec.msg);
                let fragments = highlight::fragments(&rec.msg, &ranges, &spec.opts);
                // Like Elasticsearch: no `highlight` on a hit where nothing matched.
                if !fragments.is_empty() {
                    hit["highlight"] = json!({ spec.key.as_str(): fragments });
                }
            }
            hits.push(hit);
        }
    }
    let mut resp = json!({
        "timed_out": false,
        "_shards": { "total": 1, "successful": 1, "skipped": 0, "failed": 0 },
        "hits": {
            "total": { "value": total, "relation": "eq" },
            "max_score": null,
            "hits": hits,
        },
    });
    if let Some(aggs) = req.get("aggs").or_else(|| req.get("aggregations")) {
        let out = run_aggs(view, &*matching, aggs)?;
        resp["aggregations"] = out;
    }
    Ok(resp)
}

fn run_aggs(view: &IndexView, matching: &dyn Query, aggs: &Value) -> Result<Value> {
    let aggs = aggs
        .as_object()
        .ok_or_else(|| bad("aggs must be an object"))?;
    let searcher = view.searcher();
    let mut out = Map::new();
    for (name, spec) in aggs {
        let obj = spec
            .as_object()
            .ok_or_else(|| bad(format!("aggregation {name:?} must be an object")))?;
        if obj.contains_key("aggs") || obj.contains_key("aggregations") {
            return Err(bad(format!(
                "aggregation {name:?}: sub-aggregations are not supported"
            )));
        }
        let (kind, body) = obj
            .iter()
            .find(|(k, _)| k.as_str() != "meta")
            .ok_or_else(|| bad(format!("aggregation {name:?} has no type")))?;
        let field = body
            .get("field")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let result = match kind.as_str() {
            "date_histogram" => {
                if target(field) != Target::Ts {
                    return Err(bad(format!(
                        "date_histogram {name:?}: only on @timestamp, not {field:?}"
                    )));
                }
                let interval = ["fixed_interval", "calendar_interval", "interval"]
                    .iter()
                    .find_map(|k| body.get(*k).and_then(Value::as_str))
                    .ok_or_else(|| bad(format!("date_histogram {name:?} needs fixed_interval")))?;
                let micros = parse_interval(interval)?;
                let min_doc_count = body.get("min_doc_count").and_then(Value::as_u64).unwrap_or(0);
                let counts = searcher.search(matching, &DateBuckets {
                        interval: micros,
                        columns: view.parts.columns().clone(),
                    })?;
                let mut buckets = Vec::new();
                if let (Some(first), Some(last)) = (counts.keys().next(), counts.keys().last()) {
                    if (last - first) / micros > MAX_BUCKETS {
                        return Err(bad(format!(
                            "date_histogram {name:?}: interval {interval} gives more than {MAX_BUCKETS} buckets"
                        )));
                    }
                    let mut t = *first;
                    while t <= *last {
                        let c = counts.get(&t).copied().unwrap_or(0);
                        if c >= min_doc_count {
                            let key = t.div_euclid(1000);
                            let key_str = DateTime::from_timestamp_millis(key)
                                .map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true))
                                .unwrap_or_default();
                            buckets.push(json!({ "key_as_string": key_str, "key": key, "doc_count": c }));
                        }
                        t += micros;
                    }
                }
                json!({ "buckets": buckets })
            }
            "terms" => {
                let Target::Keyword(kw) = target(field) else {
                    return Err(bad(format!(
                        "terms {name:?}: only on keyword fields (host.name, service.name, log.level, ...), not {field:?}"
                    )));
                };
                let size = body.get("size").and_then(Value::as_u64).unwrap_or(10) as usize;
                let mut counts = searcher
                    .search(matching, &KeywordCounts { fields: vec![kw] })?
                    .pop()
                    .unwrap_or_default()
                    .into_iter()
                    .collect::<Vec<_>>();
                counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let other: u64 = counts.iter().skip(size).map(|(_, c)| c).sum();
                let buckets: Vec<Value> = counts
                    .into_iter()
                    .take(size)
                    .map(|(k, c)| json!({ "key": k, "doc_count": c }))
                    .collect();
                json!({ "doc_count_error_upper_bound": 0, "sum_other_doc_count": other, "buckets": buckets })
            }
            "percentiles" | "avg" | "min" | "max" | "sum" | "value_count" => {
                let column = match target(field) {
                    Target::F64(n) => NumericColumn::F64(n),
                    Target::U64(n) => NumericColumn::U64(n),
                    _ => {
                        return Err(bad(format!(
                            "{kind} {name:?}: only on numeric fields (latency_ms, http.response.status_code), not {field:?}"
                        )))
                    }
                };
                let mut values = searcher.search(matching, &NumericValues { column })?;
                values.sort_by(f64::total_cmp);
                let n = values.len();
                let some = |x: f64| if n == 0 { Value::Null } else { json!(x) };
                match kind.as_str() {
                    "percentiles" => {
                        let percents: Vec<f64> = match body.get("percents") {
                            Some(Value::Array(a)) => a
                                .iter()
                                .map(|p| p.as_f64().filter(|p| (0.0..=100.0).contains(p)))
                                .collect::<Option<_>>()
                                .ok_or_else(|| bad(format!("percentiles {name:?}: percents must be numbers from 0 to 100")))?,
                            _ => DEFAULT_PERCENTS.to_vec(),
                        };
                        let mut vals = Map::new();
                        for p in percents {
                            vals.insert(format!("{p:?}"), some(percentile_of_sorted(&values, p)));
                        }
                        json!({ "values": vals })
                    }
                    "avg" => json!({ "value": some(values.iter().sum::<f64>() / n.max(1) as f64) }),
                    "min" => json!({ "value": some(values.first().copied().unwrap_or(0.0)) }),
                    "max" => json!({ "value": some(values.last().copied().unwrap_or(0.0)) }),
                    "sum" => json!({ "value": values.iter().sum::<f64>() }),
                    _ => json!({ "value": n }),
                }
            }
            other => {
                return Err(bad(format!(
                    "aggregation type {other:?} is not supported (date_histogram, terms, percentiles, avg, min, max, sum, value_count)"
                )))
            }
        };
        out.insert(name.clone(), result);
    }
    Ok(Value::Object(out))
}

/// `30s`, `5m`, `1h`, `1d`, `1w`, or `minute`/`hour`/`day`/`week`, in micros.
fn parse_interval(s: &str) -> Result<i64> {
    let named = match s {
        "second" | "1s" => Some(1),
        "minute" | "1m" => Some(60),
        "hour" | "1h" => Some(3600),
        "day" | "1d" => Some(86_400),
        "week" | "1w" => Some(7 * 86_400),
        _ => None,
    };
    if let Some(secs) = named {
        return Ok(secs * 1_000_000);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| bad(format!("interval {s:?}: expected e.g. 30s, 5m, 1h, 1d")))?;
    let (digits, unit) = s.split_at(split);
    let n: i64 = digits
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad(format!("interval {s:?}: expected a positive amount")))?;
    let unit_micros = match unit {
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        "w" => 7 * 86_400_000_000,
        _ => {
            return Err(bad(format!(
            "interval {s:?}: unit must be ms, s, m, h, d or w (months and years are not supported)"
        )))
        }
    };
    n.checked_mul(unit_micros)
        .ok_or_else(|| bad(format!("interval {s:?} is too large")))
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
    fn ecs_documents_map_onto_the_record() {
        let doc = json!({
            "@timestamp": "2025-06-01T10:00:00.5Z",
            "message": "GET /x took 12ms",
            "host": { "name": "node-1" },
            "service": { "name": "fib" },
            "log": { "level": "WARNING" },
            "trace": { "id": "abc" },
            "latency_ms": 12.5,
            "http": { "response": { "status_code": 503 } },
            "user": { "name": "alice" },
        });
        let Value::Object(obj) = doc else {
            unreachable!()
        };
        let r = record_from_es("logs", obj).unwrap();
        assert_eq!(
            r.ts,
            "2025-06-01T10:00:00.5Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!((r.host.as_str(), r.app.as_str()), ("node-1", "fib"));
        assert_eq!(r.level, Some(Level::Warn));
        assert_eq!(r.trace_id.as_deref(), Some("abc"));
        assert_eq!((r.latency_ms, r.status), (Some(12.5), Some(503)));
        assert_eq!(r.fields.get("user.name"), Some(&json!("alice")));
        assert_eq!(r.source, "es:logs");
        let back = ecs_source(&r);
        assert_eq!(back["host"]["name"], "node-1");
        assert_eq!(back["service"]["name"], "fib");
        assert_eq!(back["user.name"], "alice");
    }

    #[test]
    fn wrong_types_name_the_field() {
        for (doc, field) in [
            (json!({"latency_ms": "slow"}), "latency_ms"),
            (json!({"@timestamp": "yesterday"}), "@timestamp"),
            (json!({"http.response.status_code": 99999}), "status_code"),
            (json!({"message": ["a"]}), "message"),
        ] {
            let Value::Object(obj) = doc else {
                unreachable!()
            };
            let err = record_from_es("i", obj).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn bulk_parsing_keeps_order_and_isolates_bad_items() {
        let body = concat!(
            "{\"index\":{\"_index\":\"a\",\"_id\":\"1\"}}\n{\"message\":\"one\"}\n",
            "{\"create\":{\"_id\":2}}\n{\"message\":\"two\"}\n",
            "{\"delete\":{\"_index\":\"a\",\"_id\":\"1\"}}\n",
            "{\"index\":{}}\nnot json\n",
        );
        let items = parse_bulk(body.as_bytes(), Some("dflt")).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!((items[0].index.as_str(), items[0].id.as_str()), ("a", "1"));
        assert_eq!(
            (items[1].index.as_str(), items[1].id.as_str()),
            ("dflt", "2")
        );
        assert_eq!(items[1].doc.as_ref().unwrap().msg, "two");
        assert!(items[2].doc.as_ref().unwrap_err().reason.contains("delete"));
        let e = items[3].doc.as_ref().unwrap_err();
        assert!(e.reason.contains("line 7"), "{e:?}");
        assert!(!items[3].id.is_empty(), "an id is generated");

        let err = parse_bulk(b"{\"index\":{}}\n", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1") && err.contains("document line"),
            "{err}"
        );
        let err = parse_bulk(b"[1]\n", None).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn query_strings_get_our_field_names() {
        assert_eq!(
            rewrite_query_string(
                "service.name:fib AND -log.level:debug (host.name:a OR message:\"x y\")"
            ),
            "app:fib AND -level:debug (host:a OR msg:\"x y\")"
        );
        assert_eq!(rewrite_query_string("myservice.name:x"), "myservice.name:x");
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
    fn intervals_and_sorts_parse() {
        assert_eq!(parse_interval("30s").unwrap(), 30_000_000);
        assert_eq!(parse_interval("hour").unwrap(), 3_600_000_000);
        assert!(parse_interval("1M").unwrap_err().to_string().contains("1M"));
        assert!(!parse_sort(None).unwrap());
        assert!(parse_sort(Some(&json!([{"@timestamp": {"order": "asc"}}]))).unwrap());
        assert!(!parse_sort(Some(&json!(["@timestamp"]))).unwrap());
        assert!(parse_sort(Some(&json!([{"message": "asc"}]))).is_err());
    }
}
