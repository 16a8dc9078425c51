//! An Elasticsearch-compatible subset, so existing shippers and clients work unchanged:
//! `POST|PUT /_bulk` and `/{index}/_bulk` (`index`/`create`; gzip when
//! `Content-Encoding` says so), single documents as one-item bulks (`PUT|POST
//! /{index}/_doc/{id}`, `POST /{index}/_doc`, `PUT|POST /{index}/_create/{id}`, and
//! `GET|HEAD /{index}/_doc/{id}`), `GET|POST /_search` and `/{index}/_search` with the
//! common query DSL (`query_string`, `simple_query_string`, `bool`, `term`, `terms`,
//! `range`, `match`, `match_phrase`, `exists`, `match_all`, `match_none`), `sort` on
//! the timestamp, `size`/`from`, `search_after`, `highlight` of the message, and
//! `date_histogram`, `terms`, `percentiles` and `avg` (plus `min`/`max`/`sum`/
//! `value_count`) aggregations; `GET|POST /_count` and `/{index}/_count` with the same
//! queries; `GET /_cat/health` for shippers that probe it; and what clients and
//! shippers ask when they start ([`cluster`]: `GET /`, licence, xpack, nodes,
//! cluster health, and the template, ILM, pipeline and data stream calls, accepted
//! and ignored). Every answer carries `X-Elastic-Product: Elasticsearch`, and the
//! whole API also answers under [`PREFIX`] (`/es`), the base URL for clients when
//! the port's `/` is the UI's (`sandtrail up`). A path not served under [`PREFIX`]
//! (or anywhere on a port of its own) is a 404 in Elasticsearch's shape, a served
//! path asked with the wrong method a 405, both to a client with a valid token
//! (closed like the rest) and both with the product header, so a client asking
//! for an API we lack reads an Elasticsearch error, not an empty body.
//!
//! Layers: this module holds the routes and handlers (HTTP in, JSON out, errors in
//! Elasticsearch's shape); [`bulk`] parses bulk bodies and maps documents to and from
//! ECS; [`dsl`] turns the query DSL into Tantivy queries; [`search`] runs one
//! `_search` and renders its hits; [`aggs`] computes the aggregations. The collectors
//! underneath are shared with the native API ([`crate::collect`]).
//!
//! Documents are mapped, and kept as sent only where the mapping loses something.
//! Each is mapped onto a `LogRecord` (ECS names such as `@timestamp`, `message`,
//! `host.name`, `service.name`, `log.level` and `trace.id` onto the record's own
//! fields, everything else into `fields`, flattened to dotted keys), which is what
//! is indexed, searched and aggregated, and what the UI shows. When the ECS rendering
//! of that record ([`ecs_source`], what hits of native records carry) is not the
//! document the client sent, the document is stored as well, inside the record's one
//! stored JSON field (no field of its own, so no schema change), and hits return it
//! as their `_source`: a client gets back the fields it sent (as JSON values; key
//! order and number spelling are not kept). The trade-off is size: such a document's
//! message and fields are stored twice. zstd over the 512 KiB store blocks takes most
//! of the repetition back: on 100,000 Filebeat-shaped documents (nginx lines with
//! `agent.*`, `ecs`, `input`, `log.file.path`) the whole index grew from 0.107 to
//! 0.127 of the raw JSON, all of it in the doc store (0.031 to 0.051). Records shipped
//! by our own agents never carry it. Searches and aggregations are as fast as the
//! native API's (the same schema), and there is one index: the index name only
//! selects the documents bulk-loaded under that name (wildcards, `_all` and
//! `sandtrail` mean everything).
//!
//! In shard mode (issue 21) `_search`, `_count` and `GET _doc` answer for the whole
//! cluster: one owner per shard is asked (`?shards=<n>`, which scopes the request
//! to that shard here) and the answers merged as Elasticsearch's coordinating node
//! does ([`shards`]). Writes (`_bulk`, `_doc`, `_create`) are refused there with a
//! 400 ([`writable`]): indexed by the indexer asked only, not through the ingest log,
//! a fan-out would see them only when that indexer answered for their shard.
//!
//! `_id` is honoured for dedup: a document whose `_id` is already indexed is not
//! indexed again (`create` answers 409 like Elasticsearch, `index` answers 200
//! `noop`, since logs are immutable here). Documents without `_id` get a generated one.

mod aggs;
mod bulk;
pub mod cluster;
mod dsl;
mod search;
pub mod shards;

pub use aggs::{DEFAULT_PERCENTS, MAX_BUCKETS};
pub use bulk::{ecs_source, parse_bulk, record_from_es, BulkItem, ItemError};
pub use search::{run_search, DEFAULT_SIZE, MAX_WINDOW};

use crate::error::{Error, EsError, Result};
use crate::guard::Guards;
use crate::inflate::gunzip_capped;
use crate::writer::{BulkDoc, BulkOutcome};
use crate::Indexer;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query as UrlQuery, State};
use axum::http::{HeaderMap, Method};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use dsl::bad;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Instant;

/// Where the Elasticsearch API answers: at the root, with or without `GET /` (which
/// is the UI's page when the indexer shares its port with the UI), and under
/// [`PREFIX`], which clients and shippers accept as part of their base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// `GET /` is the Elasticsearch info: the indexer has its port to itself.
    Served,
    /// `GET /` belongs to someone else (the UI under `sandtrail up`); the info is
    /// at [`PREFIX`] only.
    Left,
}

/// The base path under which the whole Elasticsearch API answers, `GET /` included,
/// whatever else shares the port: `http://host:port/es` is a base URL for every
/// Elasticsearch client and shipper.
pub const PREFIX: &str = "/es";

/// The Elasticsearch routes; merged next to the native ones by [`crate::router`],
/// behind the same [`Guards`] but refusing in Elasticsearch's error shape, and
/// every answer (refusals too) carrying `X-Elastic-Product`.
pub(crate) fn router(indexer: Indexer, guards: &Guards, root: Root) -> Router {
    use axum::middleware::{from_fn_with_state, map_response};
    let es = routes(&indexer, guards, "", root == Root::Served)
        .merge(routes(&indexer, guards, PREFIX, true))
        .method_not_allowed_fallback(wrong_method)
        .layer(map_response(cluster::product_header));
    // What no route serves: ours under the prefix, and everywhere when the port is
    // the Elasticsearch API's; beside the UI the rest of the port is the UI's, and
    // its 404 stays plain. (A catch-all route under the prefix would clash with
    // `/es/{index}/...` in the router.)
    let unknown = Router::new()
        .fallback(no_handler)
        .layer(from_fn_with_state(any_role(guards), protocol::http::gate))
        .layer(map_response(cluster::product_header))
        .layer(from_fn_with_state(root, only_ours));
    es.merge(unknown).with_state(indexer)
}

/// Lets through to the Elasticsearch 404 the paths that are the API's (see
/// [`router`]); the others get the plain 404 they had.
async fn only_ours(
    State(root): State<Root>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let under_prefix = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if root == Root::Served || under_prefix {
        next.run(req).await
    } else {
        axum::http::StatusCode::NOT_FOUND.into_response()
    }
}

/// The gate of calls that show no log line: any valid token, an agent's or a
/// reader's.
fn any_role(guards: &Guards) -> protocol::http::Gate {
    use protocol::auth::Role;
    protocol::http::Gate::new(
        guards.keyring.clone(),
        &[Role::Read, Role::Agent],
        es_refuse,
    )
}

async fn no_handler(method: Method, uri: axum::http::Uri) -> EsError {
    EsError(Error::NoHandler {
        method: method.to_string(),
        uri: uri.path().to_string(),
    })
}

async fn wrong_method(method: Method, uri: axum::http::Uri) -> EsError {
    EsError(Error::WrongMethod {
        method: method.to_string(),
        uri: uri.path().to_string(),
    })
}

/// The routes under `base` (`""` or [`PREFIX`]); `root` adds `GET`/`HEAD` of `base`
/// itself.
fn routes(indexer: &Indexer, guards: &Guards, base: &str, root: bool) -> Router<Indexer> {
    use axum::middleware::from_fn_with_state;
    use axum::routing::{any, get};
    use protocol::auth::Role;
    use protocol::http::{gate, limit, Gate};
    let body_limit = indexer.config().max_body_bytes;
    let gate_for = |needs| Gate::new(guards.keyring.clone(), needs, es_refuse);
    let p = |path: &str| format!("{base}{path}");
    let bulk = Router::new()
        .route(
            &p("/{index}/_doc"),
            post(doc_auto_id).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route(
            &p("/{index}/_doc/{id}"),
            post(doc_index)
                .put(doc_index)
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .route(
            &p("/{index}/_create/{id}"),
            post(doc_create)
                .put(doc_create)
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .route(
            &p("/_bulk"),
            post(bulk_all)
                .put(bulk_all)
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        .route(
            &p("/{index}/_bulk"),
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
        .route(&p("/{index}/_doc/{id}"), get(doc_get).head(doc_get))
        .route(&p("/_search"), post(search_all).get(search_all))
        .route(&p("/{index}/_search"), post(search_index).get(search_index))
        .route(&p("/_count"), post(count_all).get(count_all))
        .route(&p("/{index}/_count"), post(count_index).get(count_index))
        .route_layer(from_fn_with_state(
            guards.search.with_reject(es_shed),
            limit,
        ))
        .route_layer(from_fn_with_state(gate_for(&[Role::Read]), gate));
    // What a client or shipper asks when it starts tells no log line: any valid
    // token may ask, the agent's as well as a reader's.
    let mut startup = Router::new()
        .route(&p("/_cat/health"), get(cat_health))
        .route(&p("/_license"), get(cluster::license))
        .route(&p("/_xpack"), get(cluster::xpack))
        .route(&p("/_nodes"), get(cluster::nodes))
        .route(&p("/_nodes/{*rest}"), get(cluster::nodes))
        .route(&p("/_cluster/health"), get(cluster::cluster_health))
        .route(&p("/_cluster/health/{index}"), get(cluster::cluster_health));
    for api in cluster::IGNORED {
        startup = startup.route(
            &p(&format!("/{api}/{{name}}")),
            any(move |method: Method, Path(name): Path<String>| async move {
                cluster::ignore(api, method, name)
            }),
        );
    }
    if root {
        let info = get(cluster::info).head(cluster::ping);
        startup = if base.is_empty() {
            startup.route("/", info)
        } else {
            // `http://host/es` and `http://host/es/` are both a client's base URL.
            startup.route(base, info.clone()).route(&p("/"), info)
        };
    }
    let startup = startup.route_layer(from_fn_with_state(any_role(guards), gate));
    bulk.merge(search).merge(startup)
}

fn es_refuse(e: protocol::auth::AuthError) -> axum::response::Response {
    axum::response::IntoResponse::into_response(EsError(Error::from(e)))
}

fn es_shed(b: protocol::http::Busy) -> axum::response::Response {
    axum::response::IntoResponse::into_response(EsError(Error::from(b)))
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
    writable(&ix, index.as_deref().unwrap_or("_bulk"))?;
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
    // The body, its records and the documents kept as sent (`BulkItem::source`).
    let factor = if gzipped { 6 } else { 3 };
    let _room = ix.reserve(body.len().saturating_mul(factor).min(max.saturating_mul(2)))?;
    let mut items = tokio::task::spawn_blocking(move || {
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
        .iter_mut()
        .filter_map(|it| {
            it.doc.as_ref().ok().map(|rec| BulkDoc {
                record: rec.clone(),
                id: Some(it.id.clone()),
                source: it.source.take(),
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

/// `POST /{index}/_doc`: one document, its id generated (elasticsearch-py's
/// `index()` without `id`).
async fn doc_auto_id(
    State(ix): State<Indexer>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> EsResult<(axum::http::StatusCode, Json<Value>)> {
    Ok(one_doc(ix, "index", index, None, headers, body).await?)
}

/// `PUT|POST /{index}/_doc/{id}`: one document under `id`; as in `_bulk`, an id
/// already indexed is left as it is (`noop`): logs are append-only here.
async fn doc_index(
    State(ix): State<Indexer>,
    Path((index, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> EsResult<(axum::http::StatusCode, Json<Value>)> {
    Ok(one_doc(ix, "index", index, Some(id), headers, body).await?)
}

/// `PUT|POST /{index}/_create/{id}`: 409 when `id` is already indexed.
async fn doc_create(
    State(ix): State<Indexer>,
    Path((index, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> EsResult<(axum::http::StatusCode, Json<Value>)> {
    Ok(one_doc(ix, "create", index, Some(id), headers, body).await?)
}

/// The single-document APIs are a one-item `_bulk`: the same mapping, dedup by
/// `_id`, answer at the commit (so the document is searchable once answered, as
/// with `refresh=wait_for`), and the item's answer in the document API's shape.
async fn one_doc(
    ix: Indexer,
    action: &str,
    index: String,
    id: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(axum::http::StatusCode, Json<Value>)> {
    writable(&ix, &index)?;
    let max = ix.config().max_body_bytes;
    let body = body.map_err(|r| Error::BadBody(r.body_text()))?;
    let gzipped = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let plain = if gzipped {
        gunzip_capped(&body, max)?
    } else {
        body.to_vec()
    };
    // Re-serialised on one line: a client may send the document pretty-printed.
    let doc: Value = serde_json::from_slice(&plain)
        .map_err(|e| Error::BadBody(format!("the document is not JSON: {e}")))?;
    if !doc.is_object() {
        return Err(Error::BadBody("the document must be a JSON object".into()));
    }
    let mut meta = json!({ "_index": index });
    if let Some(id) = id {
        meta["_id"] = json!(id);
    }
    let line = format!("{}\n{doc}\n", json!({ action: meta }));
    let Json(resp) = bulk(ix, None, HeaderMap::new(), Ok(Bytes::from(line))).await?;
    let item = resp
        .pointer(&format!("/items/0/{action}"))
        .cloned()
        .ok_or_else(|| Error::Internal("bulk answered no item".into()))?;
    let status = item["status"].as_u64().unwrap_or(500);
    let status = axum::http::StatusCode::from_u16(status as u16)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = item;
    if let Value::Object(o) = &mut out {
        o.remove("status");
        if status.is_success() {
            o.insert("_seq_no".into(), json!(0));
            o.insert("_primary_term".into(), json!(1));
        } else if let Some(error) = o.remove("error") {
            // Errors in Elasticsearch's error shape, as for the other APIs.
            let cause = json!({ "type": error["type"], "reason": error["reason"] });
            return Ok((
                status,
                Json(json!({
                    "error": { "root_cause": [cause.clone()], "type": cause["type"], "reason": cause["reason"] },
                    "status": status.as_u16(),
                })),
            ));
        }
    }
    Ok((status, Json(out)))
}

/// Writes through this API go into this indexer alone. In shard mode documents
/// reach the index through the ingest log, which every owner of their shard reads;
/// one written here would be seen by a search only while this indexer answered for
/// its shard, and lost with it. Refused, saying where to write, rather than half
/// kept (publishing them to the log is the fuller answer, not built).
fn writable(ix: &Indexer, index: &str) -> Result<()> {
    if ix.shard_mode().is_none() {
        return Ok(());
    }
    Err(Error::BadParam {
        name: "index",
        value: index.to_string(),
        expected: "no writes through the Elasticsearch API of an indexer in shard mode: \
                   ship through the ingest log (`sandtrail agent --ingest-log nats://...`), \
                   which every owner of a shard reads"
            .into(),
    })
}

/// `GET|HEAD /{index}/_doc/{id}`: the document with its `_source` as sent, or
/// `found: false` with 404 (a 503 if a shard that may hold it failed).
async fn doc_get(
    State(ix): State<Indexer>,
    Path((index, id)): Path<(String, String)>,
    params: Params,
    headers: HeaderMap,
) -> EsResult<(axum::http::StatusCode, Json<Value>)> {
    let request = json!({ "size": 1, "query": { "term": { "_id": id.clone() } } });
    let shards = params.ok().and_then(|UrlQuery(p)| p.shards);
    let resp = search_anywhere(&ix, index.clone(), shards, request, &headers).await?;
    let (status, body) = doc_answer(&resp, &index, &id)?;
    Ok((status, Json(body)))
}

/// The answer of `GET _doc` from the search that looked for it. Not found while a
/// shard failed is not "not found": the document may be on that shard, so it is a
/// 503 naming the failed shards (Elasticsearch's `no_shard_available_action_exception`)
/// rather than a 404 a client would take as the document's absence.
fn doc_answer(resp: &Value, index: &str, id: &str) -> Result<(axum::http::StatusCode, Value)> {
    if let Some(hit) = resp.pointer("/hits/hits/0") {
        return Ok((
            axum::http::StatusCode::OK,
            json!({
                "_index": hit["_index"], "_id": hit["_id"], "_version": 1, "_seq_no": 0,
                "_primary_term": 1, "found": true, "_source": hit["_source"],
            }),
        ));
    }
    let failed = resp
        .pointer("/_shards/failed")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if failed > 0 {
        let total = resp.pointer("/_shards/total").and_then(Value::as_u64);
        return Err(Error::Shards(format!(
            "document {id:?} of {index:?} not found, but {failed} of {} shards did not \
             answer: it may be on one of them",
            total.map_or("?".to_string(), |t| t.to_string())
        )));
    }
    Ok((
        axum::http::StatusCode::NOT_FOUND,
        json!({ "_index": index, "_id": id, "found": false }),
    ))
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

/// URI parameters of `_search` and `_count`.
#[derive(Debug, Default, Deserialize)]
pub struct UriParams {
    pub q: Option<String>,
    pub size: Option<String>,
    pub from: Option<String>,
    /// Shard mode only: just these shards' documents, as the fan-out asks each
    /// owner ([`shards`]).
    pub shards: Option<String>,
}

type Params = std::result::Result<UrlQuery<UriParams>, QueryRejection>;
type Body = std::result::Result<Bytes, BytesRejection>;

async fn search_all(
    State(ix): State<Indexer>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> EsResult<Json<Value>> {
    Ok(es_search(ix, "_all".into(), params, &headers, body).await?)
}

async fn search_index(
    State(ix): State<Indexer>,
    Path(index): Path<String>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> EsResult<Json<Value>> {
    Ok(es_search(ix, index, params, &headers, body).await?)
}

async fn count_all(
    State(ix): State<Indexer>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> EsResult<Json<Value>> {
    Ok(es_count(ix, "_all".into(), params, &headers, body).await?)
}

async fn count_index(
    State(ix): State<Indexer>,
    Path(index): Path<String>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> EsResult<Json<Value>> {
    Ok(es_count(ix, index, params, &headers, body).await?)
}

/// Runs a `_search` request here (outside shard mode, or for the owner's
/// `shards=` of a fan-out) or over the whole cluster (shard mode without
/// `shards=`: one owner per shard, merged by [`shards::merge`]).
async fn search_anywhere(
    ix: &Indexer,
    index: String,
    shard_list: Option<String>,
    request: Value,
    headers: &HeaderMap,
) -> Result<Value> {
    let here = match (ix.shard_mode(), shard_list) {
        (None, None) => ix.clone(),
        (None, Some(list)) => {
            return Err(Error::BadParam {
                name: "shards",
                value: list,
                expected: "no shards parameter: this indexer is not in shard mode".into(),
            })
        }
        (Some(mode), Some(list)) => {
            let of = mode.shards;
            let only = protocol::shard::parse_list(&list, of).map_err(|e| Error::BadParam {
                name: "shards",
                value: list.clone(),
                expected: e,
            })?;
            ix.scoped_to_shards(&only, of).await?
        }
        (Some(mode), None) => {
            let plan = shards::plan(&request)?;
            let path = format!("{PREFIX}/{}/_search", path_segment(&index));
            let (answers, failed) = mode
                .es_each_shard(&path, &plan.shard_request, headers)
                .await
                .map_err(owners_reason)?;
            if answers.is_empty() {
                return Err(Error::Shards(format!(
                    "all shards failed: {}",
                    failed
                        .iter()
                        .map(|(n, why)| format!("shard {n}: {why}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
            return shards::merge(&plan, mode.shards, answers, failed);
        }
    };
    here.with_view(move |view| run_search(view, &index, &request))
        .await
}

/// An owner's refusal (the caller's mistake, the same on every shard) with the
/// owner's own reason, as if this indexer had refused it.
fn owners_reason(e: Error) -> Error {
    match e {
        Error::BadParam { ref value, .. } => serde_json::from_str::<Value>(value)
            .ok()
            .and_then(|v| v.pointer("/error/reason")?.as_str().map(String::from))
            .map_or(e, |reason| {
                // A query DSL refusal says what `bad` adds again.
                let prefix = bad("").to_string();
                bad(reason.strip_prefix(&prefix).unwrap_or(&reason))
            }),
        other => other,
    }
}

/// `s` as one path segment: bytes other than letters, digits and `-._~*,`
/// percent-encoded (an index name may hold anything but `/`).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~*,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `_count`: the total of a search, for clients that ask for nothing else
/// (opensearch-py's `count`, scripts checking how much arrived).
async fn es_count(
    ix: Indexer,
    index: String,
    params: Params,
    headers: &HeaderMap,
    body: Body,
) -> Result<Json<Value>> {
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
    let resp = search_anywhere(&ix, index, params.shards, request, headers).await?;
    Ok(Json(json!({
        "count": resp.pointer("/hits/total/value").cloned().unwrap_or(json!(0)),
        "_shards": resp["_shards"],
    })))
}

/// The URL parameters and the JSON body of a `_search` or `_count`, with `?q=`
/// already turned into the body's query.
fn search_request(params: Params, body: Body) -> Result<(UriParams, Value)> {
    let UrlQuery(params) = params.map_err(|r| Error::BadParam {
        name: "query string",
        value: r.body_text(),
        expected: "q, size, from and (in shard mode) shards".into(),
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

async fn es_search(
    ix: Indexer,
    index: String,
    params: Params,
    headers: &HeaderMap,
    body: Body,
) -> Result<Json<Value>> {
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
    let mut resp = search_anywhere(&ix, index, params.shards, request, headers).await?;
    if let Value::Object(o) = &mut resp {
        o.insert("took".into(), json!(started.elapsed().as_millis() as u64));
    }
    Ok(Json(resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bug (issue 21 review): in shard mode a document on a shard whose owners all
    /// failed was answered 404 `found: false`, which a client takes as its absence.
    #[test]
    fn a_document_not_found_while_a_shard_failed_is_a_503_not_a_404() {
        let miss = |failed: u64| {
            json!({ "_shards": { "total": 6, "successful": 6 - failed, "failed": failed },
                    "hits": { "total": { "value": 0 }, "hits": [] } })
        };
        let (status, body) = doc_answer(&miss(0), "logs", "a1").unwrap();
        assert_eq!(status, axum::http::StatusCode::NOT_FOUND);
        assert_eq!(body["found"], false);
        let e = doc_answer(&miss(2), "logs", "a1").unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.to_string().contains("2 of 6 shards"), "{e}");
        let hit = json!({ "_shards": { "total": 6, "successful": 5, "failed": 1 },
                          "hits": { "hits": [{ "_index": "logs", "_id": "a1", "_source": { "m": 1 } }] } });
        let (status, body) = doc_answer(&hit, "logs", "a1").unwrap();
        assert_eq!(status, axum::http::StatusCode::OK);
        assert_eq!(
            body["_source"]["m"], 1,
            "a hit is a hit, whatever else failed"
        );
    }
}
