//! The indexer's HTTP API: ingest, search, histogram and live tail.
//!
//! Handlers are thin: they move CPU work (inflating, decoding, searching) off the
//! async runtime and hand over to [`Indexer`]. Credentials and concurrency are checked
//! by the layers of [`Guards`] before a handler (or its body extractor) runs, so a
//! request without a token never costs its body. The ingest body is
//! inflated with a hard cap, so a gzip bomb costs at most `max_body_bytes` of memory,
//! and decoded completely before anything is written, so a bad batch changes nothing.
//! The trade-off: a batch is held in memory twice (inflated bytes and records) while
//! it is decoded, which is what the cap bounds.

use crate::analytics::{
    parse_size, ContextParams, ContextResponse, FieldsResponse, GroupBy, LatencyResponse, Scope,
    DEFAULT_TOP_SIZE, MAX_TOP_SIZE,
};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::search::SearchParams;
use crate::tail::{tail_events, TailEvent, TailFilter};
use crate::Indexer;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use protocol::auth::{AuthError, Keyring, Role};
use protocol::http::{gate, limit, Busy, Gate, Limit};
use protocol::{HistogramResponse, IngestResponse, SearchResponse};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

/// How often an idle tail stream sends a comment, so proxies keep it open.
pub const TAIL_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The indexer's routes (without `/healthz` and `/metrics`, which the binary adds).
/// Ingest needs the `agent` role, everything else `read`; see [`Guards`].
pub fn router(indexer: Indexer) -> Router {
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
        .merge(crate::es::router(indexer, &guards))
}

/// What stands in front of the handlers: who may call (the cluster token as admin
/// plus the role tokens of the config) and how many may be in flight per class. The
/// Elasticsearch routes share the same permits, answering in their own error shape.
#[derive(Clone)]
pub(crate) struct Guards {
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) ingest: Limit,
    pub(crate) search: Limit,
    pub(crate) tail: Limit,
}

impl Guards {
    fn new(c: &crate::IndexerConfig) -> Guards {
        let mut keyring = Keyring::with_admin(c.token.as_deref());
        keyring.extend(&c.tokens);
        Guards {
            keyring: Arc::new(keyring),
            ingest: Limit::new("ingest", c.max_concurrent_ingest, shed),
            search: Limit::new("search", c.max_concurrent_searches, shed),
            tail: Limit::new("tail", c.max_tail_streams, shed),
        }
    }

    pub(crate) fn gate(&self, needs: &'static [Role]) -> Gate {
        Gate::new(self.keyring.clone(), needs, refuse)
    }
}

fn refuse(e: AuthError) -> axum::response::Response {
    Error::from(e).into_response()
}

fn shed(b: Busy) -> axum::response::Response {
    Error::from(b).into_response()
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
    // The compressed body is already in memory; reserve for it and what it
    // inflates to (about four times as much) before inflating.
    let logged = params.logged()?;
    let _room = ix.reserve(body.len().saturating_mul(5).min(max.saturating_mul(2)))?;
    let wire = body.clone();
    let records = tokio::task::spawn_blocking(move || {
        let ndjson = decompress_capped(&body, max)?;
        Ok::<_, Error>(protocol::decode_ndjson(&ndjson)?)
    })
    .await
    .map_err(|e| Error::Internal(format!("decode task failed: {e}")))??;
    let ack = if logged {
        crate::Ack::Logged(wire)
    } else {
        crate::Ack::Committed(Some(wire))
    };
    ix.ingest_with(records, ack).await
}

/// zstd's frame magic (RFC 8878), little-endian `0xFD2FB528`.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Decompresses an ingest body, gzip or zstd, told apart by their magic bytes rather
/// than by `Content-Encoding` (which proxies rewrite and curl users forget). zstd is
/// what our shipper sends by default: about 1.4 times as fast as gzip level 1 at a
/// third less size on log NDJSON (BENCHMARKS.md). Either way decompression stops at
/// `max` bytes instead of inflating a bomb first. A body that starts as JSON does
/// (`{`, after any whitespace) is plain NDJSON, what the shipper sends to an indexer
/// on its own host, where compressing would only cost both sides CPU.
pub fn decompress_capped(body: &[u8], max: usize) -> Result<Vec<u8>> {
    if body.starts_with(&ZSTD_MAGIC) {
        return unzstd_capped(body, max);
    }
    if is_plain_ndjson(body) {
        return plain_capped(body, max);
    }
    gunzip_capped(body, max)
}

/// Whether `body` is uncompressed NDJSON: its first non-blank byte opens an object.
fn is_plain_ndjson(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn plain_capped(body: &[u8], max: usize) -> Result<Vec<u8>> {
    if body.len() > max {
        return Err(Error::BodyTooLarge { limit: max });
    }
    Ok(body.to_vec())
}

/// Largest zstd window a body may ask for (2^24 = 16 MiB; `zstd -19` uses 8 MiB). The
/// library's own default allows 128 MiB per decompression, which concurrent hostile
/// bodies could multiply.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// [`decompress_capped`] for a write-ahead log entry: accepted once, possibly by a
/// build without the window cap, so it is not held to [`ZSTD_WINDOW_LOG_MAX`] (an
/// acknowledged entry skipped as unreadable would be a lost batch).
pub(crate) fn decompress_for_replay(body: &[u8], max: usize) -> Result<Vec<u8>> {
    if is_plain_ndjson(body) {
        return plain_capped(body, max);
    }
    if !body.starts_with(&ZSTD_MAGIC) {
        return gunzip_capped(body, max);
    }
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    let mut decoder = zstd::stream::read::Decoder::new(body)
        .map_err(|e| Error::BadBody(format!("invalid zstd: {e}")))?;
    decoder
        .window_log_max(31)
        .map_err(|e| Error::BadBody(format!("invalid zstd: {e}")))?;
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::BadBody(format!("invalid zstd: {e}")))?;
    if out.len() > max {
        return Err(Error::BodyTooLarge { limit: max });
    }
    Ok(out)
}

fn unzstd_capped(body: &[u8], max: usize) -> Result<Vec<u8>> {
    // One decompression context per blocking thread, reused: creating one per
    // request (tables and window allocated and cleared) was 4 % of the ingest path's
    // CPU in the pipeline benchmark (BENCHMARKS.md, issue 14).
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    DCTX.with_borrow_mut(|slot| {
        let cx = match slot {
            Some(cx) => cx,
            None => {
                let mut cx = zstd::zstd_safe::DCtx::create();
                cx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                    ZSTD_WINDOW_LOG_MAX,
                ))
                .map_err(|code| {
                    Error::Internal(format!(
                        "zstd refused window log {ZSTD_WINDOW_LOG_MAX}: {}",
                        zstd::zstd_safe::get_error_name(code)
                    ))
                })?;
                slot.insert(cx)
            }
        };
        zstd::stream::read::Decoder::with_context(body, cx)
            .take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::BadBody(format!("invalid zstd: {e}")))
    })?;
    if out.len() > max {
        return Err(Error::BodyTooLarge { limit: max });
    }
    Ok(out)
}

/// Inflates a gzip body (one or more members), refusing to produce more than `max`
/// bytes: decompression stops at the cap instead of inflating everything first.
pub fn gunzip_capped(body: &[u8], max: usize) -> Result<Vec<u8>> {
    if body.len() < 2 || body[..2] != [0x1f, 0x8b] {
        return Err(Error::BadBody(format!(
            "body of {} bytes is neither NDJSON, gzip nor zstd (expected `{{` first, or magic 1f 8b or 28 b5 2f fd)",
            body.len()
        )));
    }
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    flate2::read::MultiGzDecoder::new(body)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::BadBody(format!("invalid gzip: {e}")))?;
    if out.len() > max {
        return Err(Error::BodyTooLarge { limit: max });
    }
    Ok(out)
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

async fn search(
    State(ix): State<Indexer>,
    Query(params): Query<SearchParams>,
) -> Result<Json<SearchBody>> {
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

async fn fields(
    State(ix): State<Indexer>,
    Query(params): Query<SearchParams>,
) -> Result<Json<FieldsResponse>> {
    let scope = scope_of(&params)?;
    let size = parse_size(
        "size",
        params.size.as_deref(),
        DEFAULT_TOP_SIZE,
        MAX_TOP_SIZE,
    )?;
    Ok(Json(ix.top_fields(scope, size).await?))
}

async fn latency(
    State(ix): State<Indexer>,
    Query(params): Query<SearchParams>,
) -> Result<Json<LatencyResponse>> {
    let scope = scope_of(&params)?;
    let by = GroupBy::parse(params.by.as_deref().unwrap_or(""))?;
    Ok(Json(ix.latency(scope, by).await?))
}

async fn context(
    State(ix): State<Indexer>,
    Query(params): Query<ContextParams>,
) -> Result<Json<ContextResponse>> {
    Ok(Json(ix.context(params.into_request()?).await?))
}

async fn histogram(
    State(ix): State<Indexer>,
    Query(params): Query<SearchParams>,
) -> Result<Json<HistogramResponse>> {
    let req = params.into_histogram_request(chrono::Utc::now())?;
    Ok(Json(ix.histogram(req).await?))
}

#[derive(Debug, Default, Deserialize)]
struct TailParams {
    q: Option<String>,
}

async fn tail(
    State(ix): State<Indexer>,
    Query(params): Query<TailParams>,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let filter = TailFilter::parse(params.q.as_deref().unwrap_or(""))?;
    // Subscribe before answering, so nothing accepted after the client sees the
    // response headers is missed.
    let events = tail_events(ix.subscribe(), filter, ix.metrics_handle())
        .map(|event| {
            Ok(match event {
                TailEvent::Record(rec) => Event::default().json_data(&*rec).unwrap_or_else(|e| {
                    Event::default().comment(format!("unencodable record: {e}"))
                }),
                TailEvent::Dropped(n) => Event::default()
                    .event("dropped")
                    .data(serde_json::json!({ "dropped": n }).to_string()),
            })
        })
        .take_until(ix.cancelled());
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(TAIL_KEEP_ALIVE)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        // Not `fast()`: with the zlib-rs backend that level barely shrinks runs of
        // zeros, and the bomb test needs a small body that inflates hugely.
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn zstd_bodies_decompress_and_bombs_stop_at_the_cap() {
        let body = zstd::bulk::compress(b"{\"a\":1}\n", 1).unwrap();
        assert_eq!(decompress_capped(&body, 100).unwrap(), b"{\"a\":1}\n");
        let bomb = zstd::bulk::compress(&vec![0u8; 10 << 20], 3).unwrap();
        assert!(bomb.len() < 100_000);
        assert!(matches!(
            decompress_capped(&bomb, 1 << 20),
            Err(Error::BodyTooLarge { limit }) if limit == 1 << 20
        ));
        let mut torn = zstd::bulk::compress(&[b'x'; 4096], 1).unwrap();
        torn.truncate(torn.len() / 2);
        let err = decompress_capped(&torn, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("zstd"), "{err}");
        let err = decompress_capped(b"plain text", 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither NDJSON, gzip nor zstd"), "{err}");
    }

    #[test]
    fn plain_ndjson_bodies_pass_as_they_are_up_to_the_cap() {
        // What the shipper sends to an indexer on its own host (Codec::None).
        let body = b"\n {\"a\":1}\n{\"b\":2}\n";
        assert_eq!(decompress_capped(body, 100).unwrap(), body);
        assert_eq!(decompress_for_replay(body, 100).unwrap(), body);
        assert!(matches!(
            decompress_capped(body, 10),
            Err(Error::BodyTooLarge { limit: 10 })
        ));
        assert!(matches!(
            decompress_capped(b"[1,2]", 100),
            Err(Error::BadBody(_))
        ));
    }

    #[test]
    fn the_reused_zstd_context_starts_clean_after_a_bad_body_and_refuses_huge_windows() {
        // The thread's context is reused: a torn frame must not leave state that
        // bleeds into the next body, and a body whose window is larger than
        // ZSTD_WINDOW_LOG_MAX is refused instead of allocating it.
        let mut torn = zstd::bulk::compress(&[b'y'; 100_000], 1).unwrap();
        torn.truncate(torn.len() / 2);
        for _ in 0..3 {
            assert!(decompress_capped(&torn, 1 << 20).is_err());
            let body = zstd::bulk::compress(b"{\"b\":2}\n", 1).unwrap();
            assert_eq!(decompress_capped(&body, 100).unwrap(), b"{\"b\":2}\n");
        }
        // Streamed without a size, so the frame declares the whole 128 MiB window.
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        enc.window_log(27).unwrap();
        enc.long_distance_matching(true).unwrap();
        enc.write_all(&vec![0u8; 20 << 20]).unwrap();
        let wide = enc.finish().unwrap();
        match decompress_capped(&wide, 64 << 20) {
            Err(Error::BadBody(e)) => assert!(e.contains("invalid zstd"), "{e}"),
            Err(e) => panic!("expected a bad body, got {e}"),
            Ok(out) => panic!("a 128 MiB window was accepted ({} bytes out)", out.len()),
        }
        // A write-ahead log entry was accepted once, maybe by a build without the
        // cap: its replay is not held to it (review finding).
        assert_eq!(
            decompress_for_replay(&wide, 64 << 20).unwrap().len(),
            20 << 20
        );
    }

    #[test]
    fn gunzip_round_trips_and_accepts_concatenated_members() {
        let mut body = gzip(b"hello ");
        body.extend(gzip(b"world"));
        assert_eq!(gunzip_capped(&body, 100).unwrap(), b"hello world");
    }

    #[test]
    fn gunzip_stops_at_the_cap() {
        let bomb = gzip(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 100_000);
        assert!(matches!(
            gunzip_capped(&bomb, 1 << 20),
            Err(Error::BodyTooLarge { limit }) if limit == 1 << 20
        ));
        assert_eq!(
            gunzip_capped(&gzip(&[7; 64]), 64).unwrap().len(),
            64,
            "exactly the cap is fine"
        );
    }

    #[test]
    fn gunzip_rejects_plain_and_truncated_bodies() {
        let err = gunzip_capped(b"{\"plain\":true}", 100).unwrap_err();
        assert!(err.to_string().contains("gzip nor zstd"), "{err}");
        let full = gzip(b"some text that is long enough to matter");
        let err = gunzip_capped(&full[..full.len() - 6], 100).unwrap_err();
        assert!(matches!(err, Error::BadBody(_)), "{err}");
    }
}
