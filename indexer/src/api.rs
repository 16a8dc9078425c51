//! The indexer's native HTTP API: ingest, search, histogram, the field sidebar,
//! latency, context and live tail.
//!
//! Handlers are thin: they move CPU work (inflating, decoding, searching) off the
//! async runtime and hand over to [`Indexer`]. Credentials and concurrency are checked
//! by the layers of [`Guards`] before a handler (or its body extractor) runs, so a
//! request without a token never costs its body. The ingest body is
//! inflated with a hard cap ([`crate::inflate`]), so a gzip or zstd bomb costs at most
//! `max_body_bytes` of memory, and decoded completely before anything is written, so a
//! bad batch changes nothing. The trade-off: a batch is held in memory twice (inflated
//! bytes and records) while it is decoded, which is what the cap bounds. The
//! Elasticsearch routes ([`crate::es`]) are merged in here, behind the same guards.

use crate::analytics::{parse_size, ContextParams, GroupBy, Scope, DEFAULT_TOP_SIZE, MAX_TOP_SIZE};
use crate::error::{Error, Result};
use crate::fanout::TailItem;
use crate::guard::Guards;
use crate::inflate::decompress_capped;
use crate::metrics::Metrics;
use crate::search::SearchParams;
use crate::tail::{resumed_events, TailEvent, TailFilter};
use crate::Indexer;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use protocol::auth::Role;
use protocol::http::{gate, limit};
use protocol::{HistogramResponse, IngestResponse, SearchResponse};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::time::Duration;

/// How often an idle tail stream sends a comment, so proxies keep it open.
pub const TAIL_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The indexer's routes (without `/healthz` and `/metrics`, which the binary adds).
/// Ingest needs the `agent` role, everything else `read`; see [`Guards`].
///
/// The Elasticsearch API answers at the root (with `GET /` for its info) and under
/// [`crate::es::PREFIX`]; see [`router_beside_ui`] for a port shared with the UI.
pub fn router(indexer: Indexer) -> Router {
    routes(indexer, crate::es::Root::Served)
}

/// [`router`] for a port whose `GET /` is the UI's (`sandtrail up`): the
/// Elasticsearch info is at [`crate::es::PREFIX`] only, so `http://host:port/es` is
/// the base URL for Elasticsearch clients there.
pub fn router_beside_ui(indexer: Indexer) -> Router {
    routes(indexer, crate::es::Root::Left)
}

fn routes(indexer: Indexer, es_root: crate::es::Root) -> Router {
    let guards = Guards::new(indexer.config());
    // The compressed body may not be larger than the inflated cap either.
    let body_limit = indexer.config().max_body_bytes;
    let ingest = Router::new()
        .route(
            "/api/v1/ingest",
            post(ingest).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route_layer(from_fn_with_state(guards.ingest.clone(), limit))
        .route_layer(from_fn_with_state(guards.gate(&[Role::Agent]), gate));
    let search = Router::new()
        .route("/api/v1/search", get(search))
        .route("/api/v1/histogram", get(histogram))
        .route("/api/v1/fields", get(fields))
        .route("/api/v1/latency", get(latency))
        .route("/api/v1/context", get(context))
        .route_layer(from_fn_with_state(guards.search.clone(), limit))
        .route_layer(from_fn_with_state(guards.gate(&[Role::Read]), gate));
    let tail = Router::new()
        .route("/api/v1/tail", get(tail))
        .route_layer(from_fn_with_state(guards.tail.clone(), limit))
        .route_layer(from_fn_with_state(guards.gate(&[Role::Read]), gate));
    ingest
        .merge(search)
        .merge(tail)
        .with_state(indexer.clone())
        .merge(crate::es::router(indexer, &guards, es_root))
}

/// `POST /api/v1/ingest` parameters.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestParams {
    /// As Elasticsearch's: `wait_for` (the default; `true` is taken the same way)
    /// answers once the records are committed and searchable, `false` once the
    /// request is durable in the write-ahead log (searchable within the commit
    /// interval), which is what the shipper sends.
    pub refresh: Option<String>,
}

impl IngestParams {
    fn logged(&self) -> Result<bool> {
        match self.refresh.as_deref() {
            None | Some("wait_for") | Some("true") | Some("") => Ok(false),
            Some("false") => Ok(true),
            Some(other) => Err(Error::BadParam {
                name: "refresh",
                value: other.to_string(),
                expected: "`false` (answer once logged) or `wait_for` (once searchable)".into(),
            }),
        }
    }
}

async fn ingest(
    State(ix): State<Indexer>,
    params: std::result::Result<Query<IngestParams>, QueryRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<IngestResponse>> {
    Metrics::inc(&ix.metrics_handle().ingest_requests, 1);
    let result = match params {
        Ok(Query(params)) => ingest_inner(&ix, &params, body).await,
        Err(rejection) => Err(Error::BadParam {
            name: "query string",
            value: rejection.body_text(),
            expected: "only `refresh` (`false` or `wait_for`)".into(),
        }),
    };
    if result.is_err() {
        Metrics::inc(&ix.metrics_handle().ingest_rejected, 1);
    }
    result.map(Json)
}

async fn ingest_inner(
    ix: &Indexer,
    params: &IngestParams,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<IngestResponse> {
    let max = ix.config().max_body_bytes;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::BodyTooLarge { limit: max }
        } else {
            Error::BadBody(rejection.body_text())
        }
    })?;
    // The body is already in memory; reserve for it and what it inflates to (about
    // four times as much if compressed, a copy if plain) before inflating.
    let logged = params.logged()?;
    let _room = ix.reserve(body.len().saturating_mul(5).min(max.saturating_mul(2)))?;
    let wire = body.clone();
    let records = tokio::task::spawn_blocking(move || {
        let ndjson = decompress_capped(&body, max)?;
        Ok::<_, Error>(protocol::decode_ndjson(&ndjson)?)
    })
    .await
    .map_err(|e| Error::Internal(format!("decode task failed: {e}")))??;
    // Those sources are the shard owners' stream positions (crate::ingest_log).
    if let Some(r) = records
        .iter()
        .find(|r| protocol::shard::is_position_source(&r.source))
    {
        return Err(Error::BadBody(format!(
            "source {:?} is reserved for shard positions, expected a log source id",
            r.source
        )));
    }
    let ack = if logged {
        crate::Ack::Logged(wire)
    } else {
        crate::Ack::Committed(Some(wire))
    };
    ix.ingest_with(records, ack).await
}

/// `SearchResponse` plus, with `highlight=true`, per hit (parallel to `hits`): the
/// matched byte ranges of `msg` and HTML fragments of `msg` with the matches in
/// `<em>` (log text escaped; no fragment when no term of `msg` matched).
#[derive(Debug, Serialize)]
struct SearchBody {
    #[serde(flatten)]
    response: SearchResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    highlights: Option<Vec<Vec<[usize; 2]>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fragments: Option<Vec<Vec<String>>>,
}

/// The `shards=` list of a shard-mode request, refused with the reason when it names
/// no shard of the `of` this cluster has.
fn shards_param(list: &str, of: u32) -> Result<Vec<u32>> {
    protocol::shard::parse_list(list, of).map_err(|e| Error::BadParam {
        name: "shards",
        value: list.to_string(),
        expected: e,
    })
}

/// In shard mode (issue 21): `shards=` restricts this indexer's search to those
/// shards (what the fan-out asks an owner); without it the request is for the
/// cluster, `Ok(None)`, and fans out. Outside shard mode `shards=` is refused.
async fn scoped(ix: Indexer, params: &mut SearchParams) -> Result<Option<Indexer>> {
    let list = params.shards.take();
    match (ix.shard_mode(), list) {
        (None, None) => Ok(Some(ix)),
        (None, Some(list)) => Err(Error::BadParam {
            name: "shards",
            value: list,
            expected: "no shards parameter: this indexer is not in shard mode".into(),
        }),
        (Some(_), None) => Ok(None),
        (Some(mode), Some(list)) => {
            let of = mode.shards;
            let shards = shards_param(&list, of)?;
            Ok(Some(ix.scoped_to_shards(&shards, of).await?))
        }
    }
}

async fn search(
    State(ix): State<Indexer>,
    headers: axum::http::HeaderMap,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
    Query(mut params): Query<SearchParams>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    let Some(ix) = scoped(ix.clone(), &mut params).await? else {
        let mode = ix.shard_mode().expect("fan-out only in shard mode").clone();
        let pairs = raw
            .as_deref()
            .map(|q| {
                reqwest::Url::parse(&format!("http://x/?{q}"))
                    .map(|u| u.query_pairs().into_owned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        return Ok(Json(mode.search(&params, pairs, &headers).await?).into_response());
    };
    Ok(search_here(ix, params).await?.into_response())
}

async fn search_here(ix: Indexer, params: SearchParams) -> Result<Json<SearchBody>> {
    let highlight = params.wants_highlight()?;
    let req = params.into_request(chrono::Utc::now())?;
    Ok(Json(if highlight {
        let (response, marks) = ix.search_highlighted(req).await?;
        let (ranges, fragments) = marks.into_iter().map(|h| (h.ranges, h.fragments)).unzip();
        SearchBody {
            response,
            highlights: Some(ranges),
            fragments: Some(fragments),
        }
    } else {
        SearchBody {
            response: ix.search(req).await?,
            highlights: None,
            fragments: None,
        }
    }))
}

fn scope_of(params: &SearchParams) -> Result<Scope> {
    let req = SearchParams {
        q: params.q.clone(),
        start: params.start.clone(),
        end: params.end.clone(),
        ..SearchParams::default()
    }
    .into_request(chrono::Utc::now())?;
    Ok(Scope {
        q: req.q,
        start: req.start,
        end: req.end,
    })
}

/// In shard mode without `shards=` the top values of every shard, merged
/// ([`crate::fanout::merge_fields`]).
async fn fields(
    State(ix): State<Indexer>,
    headers: axum::http::HeaderMap,
    Query(mut params): Query<SearchParams>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    let size = parse_size(
        "size",
        params.size.as_deref(),
        DEFAULT_TOP_SIZE,
        MAX_TOP_SIZE,
    )?;
    let scoped_ix = scoped(ix.clone(), &mut params).await?;
    let scope = scope_of(&params)?;
    let Some(ix) = scoped_ix else {
        let mode = ix.shard_mode().expect("fan-out only in shard mode").clone();
        return Ok(Json(mode.fields(&scope, size, &headers).await?).into_response());
    };
    Ok(Json(ix.top_fields(scope, size).await?).into_response())
}

/// In shard mode without `shards=` the groups of every shard, merged through
/// their sketches ([`crate::fanout::merge_latency`]).
async fn latency(
    State(ix): State<Indexer>,
    headers: axum::http::HeaderMap,
    Query(mut params): Query<SearchParams>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    let by = GroupBy::parse(params.by.as_deref().unwrap_or(""))?;
    let sketch = match params.sketch.as_deref().map(str::trim) {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(Error::BadParam {
                name: "sketch",
                value: other.to_string(),
                expected: "true or false".to_string(),
            })
        }
    };
    let scoped_ix = scoped(ix.clone(), &mut params).await?;
    let scope = scope_of(&params)?;
    let Some(ix) = scoped_ix else {
        let mode = ix.shard_mode().expect("fan-out only in shard mode").clone();
        return Ok(Json(mode.latency(&scope, by, sketch, &headers).await?).into_response());
    };
    Ok(Json(ix.latency(scope, by, sketch).await?).into_response())
}

/// In shard mode without `shards=` every shard's records around the given one,
/// merged ([`crate::fanout::merge_context`]): a task's sources may hash into
/// different shards. The answer then says which shards answered (`shards`).
async fn context(
    State(ix): State<Indexer>,
    headers: axum::http::HeaderMap,
    Query(mut params): Query<ContextParams>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    let mut search = SearchParams {
        shards: params.shards.take(),
        ..SearchParams::default()
    };
    let scoped_ix = scoped(ix.clone(), &mut search).await?;
    let req = params.into_request()?;
    let Some(ix) = scoped_ix else {
        let mode = ix.shard_mode().expect("fan-out only in shard mode").clone();
        return Ok(Json(mode.context(&req, &headers).await?).into_response());
    };
    Ok(Json(ix.context(req).await?).into_response())
}

async fn histogram(
    State(ix): State<Indexer>,
    headers: axum::http::HeaderMap,
    Query(mut params): Query<SearchParams>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    let Some(ix) = scoped(ix.clone(), &mut params).await? else {
        let mode = ix.shard_mode().expect("fan-out only in shard mode").clone();
        return Ok(Json(mode.histogram(&params, &headers).await?).into_response());
    };
    Ok(histogram_here(ix, params).await?.into_response())
}

async fn histogram_here(ix: Indexer, params: SearchParams) -> Result<Json<HistogramResponse>> {
    let req = params.into_histogram_request(chrono::Utc::now())?;
    Ok(Json(ix.histogram(req).await?))
}

#[derive(Debug, Default, Deserialize)]
struct TailParams {
    q: Option<String>,
    /// Shard mode only: just these shards' records, as the fan-out asks each owner.
    shards: Option<String>,
}

fn dropped_event(n: u64) -> Event {
    Event::default()
        .event("dropped")
        .data(serde_json::json!({ "dropped": n }).to_string())
}

/// `GET /api/v1/tail?q=FILTER`: matching records as SSE events as they are accepted,
/// each with an `id:` ([`crate::tail::Hub`]); a reconnect that sends the last one as
/// `Last-Event-ID` (browsers' `EventSource` do so by themselves) gets the records it
/// missed first, each once, then the live ones.
///
/// In shard mode without `shards=` the stream merges one owner's stream per shard
/// ([`crate::fanout::ShardMode::tail`]): every shard's lines once, but without
/// event ids or resuming (`x-sandtrail-tail-resumed: false` always).
async fn tail(
    State(ix): State<Indexer>,
    headers: axum::http::HeaderMap,
    Query(params): Query<TailParams>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    let q = params.q.as_deref().unwrap_or("");
    let filter = TailFilter::parse(q)?;
    let only: Option<(Vec<u32>, u32)> = match (ix.shard_mode(), params.shards) {
        (None, None) => None,
        (None, Some(list)) => {
            return Err(Error::BadParam {
                name: "shards",
                value: list,
                expected: "no shards parameter: this indexer is not in shard mode".into(),
            })
        }
        (Some(mode), None) => {
            let items = mode.tail(q, &headers).await?;
            let events = items
                .map(|item| {
                    Ok::<_, Infallible>(match item {
                        TailItem::Record(rec) => {
                            Event::default().json_data(&rec).unwrap_or_else(|e| {
                                Event::default().comment(format!("unencodable record: {e}"))
                            })
                        }
                        TailItem::Dropped(n) => dropped_event(n),
                    })
                })
                .take_until(ix.cancelled());
            return Ok((
                [("x-sandtrail-tail-resumed", "false")],
                Sse::new(events).keep_alive(KeepAlive::new().interval(TAIL_KEEP_ALIVE)),
            )
                .into_response());
        }
        (Some(mode), Some(list)) => {
            let of = mode.shards;
            Some((shards_param(&list, of)?, of))
        }
    };
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    // Subscribe before answering, so nothing accepted after the client sees the
    // response headers is missed.
    let sub = ix.resume_tail(last);
    // Tells a client that kept its own place (the CLI) whether it has to catch up:
    // `false` after an indexer restart, whose ids start again.
    let resumed = if sub.resumed { "true" } else { "false" };
    let ids = ix.clone();
    let events = resumed_events(sub, filter, ix.metrics_handle())
        .filter(move |event| {
            let keep = match (&only, event) {
                (Some((shards, of)), TailEvent::Record(rec)) => {
                    shards.contains(&protocol::shard::shard_of(&rec.record.source, *of))
                }
                _ => true,
            };
            std::future::ready(keep)
        })
        .map(move |event| {
            Ok::<_, Infallible>(match event {
                TailEvent::Record(rec) => Event::default()
                    .id(ids.tail_event_id(rec.seq))
                    .json_data(&rec.record)
                    .unwrap_or_else(|e| {
                        Event::default().comment(format!("unencodable record: {e}"))
                    }),
                TailEvent::Dropped(n) => dropped_event(n),
            })
        })
        .take_until(ix.cancelled());
    Ok((
        [("x-sandtrail-tail-resumed", resumed)],
        Sse::new(events).keep_alive(KeepAlive::new().interval(TAIL_KEEP_ALIVE)),
    )
        .into_response())
}
