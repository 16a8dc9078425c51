//! The indexer's HTTP API: ingest, search, histogram and live tail.
//!
//! Handlers are thin: they check the token, move CPU work (inflating, decoding,
//! searching) off the async runtime, and hand over to [`Indexer`]. The ingest body is
//! inflated with a hard cap, so a gzip bomb costs at most `max_body_bytes` of memory,
//! and decoded completely before anything is written, so a bad batch changes nothing.
//! The trade-off: a batch is held in memory twice (inflated bytes and records) while
//! it is decoded, which is what the cap bounds.

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::search::SearchParams;
use crate::tail::{tail_events, TailEvent, TailFilter};
use crate::Indexer;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use protocol::{HistogramResponse, IngestResponse, SearchResponse};
use serde::Deserialize;
use std::convert::Infallible;
use std::io::Read;
use std::time::Duration;

/// How often an idle tail stream sends a comment, so proxies keep it open.
pub const TAIL_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The indexer's routes (without `/healthz` and `/metrics`, which the binary adds).
pub fn router(indexer: Indexer) -> Router {
    // The compressed body may not be larger than the inflated cap either.
    let body_limit = indexer.config().max_body_bytes;
    Router::new()
        .route(
            "/api/v1/ingest",
            post(ingest).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/api/v1/search", get(search))
        .route("/api/v1/histogram", get(histogram))
        .route("/api/v1/tail", get(tail))
        .with_state(indexer)
}

async fn ingest(
    State(ix): State<Indexer>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<IngestResponse>> {
    Metrics::inc(&ix.metrics_handle().ingest_requests, 1);
    let result = ingest_inner(&ix, &headers, body).await;
    if result.is_err() {
        Metrics::inc(&ix.metrics_handle().ingest_rejected, 1);
    }
    result.map(Json)
}

async fn ingest_inner(
    ix: &Indexer,
    headers: &HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<IngestResponse> {
    check_token(ix.config().token.as_deref(), headers)?;
    let max = ix.config().max_body_bytes;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::BodyTooLarge { limit: max }
        } else {
            Error::BadBody(rejection.body_text())
        }
    })?;
    let records = tokio::task::spawn_blocking(move || {
        let ndjson = gunzip_capped(&body, max)?;
        Ok::<_, Error>(protocol::decode_ndjson(&ndjson)?)
    })
    .await
    .map_err(|e| Error::Internal(format!("decode task failed: {e}")))??;
    ix.ingest(records).await
}

/// Accepts `x-sandtrail-token: T` or `Authorization: Bearer T` when a token is set.
fn check_token(expected: Option<&str>, headers: &HeaderMap) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let given = header(protocol::TOKEN_HEADER).or_else(|| {
        header("authorization").and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    });
    match given {
        Some(g) if constant_time_eq(g.trim().as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(Error::Unauthorized),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Inflates a gzip body (one or more members), refusing to produce more than `max`
/// bytes: decompression stops at the cap instead of inflating everything first.
pub fn gunzip_capped(body: &[u8], max: usize) -> Result<Vec<u8>> {
    if body.len() < 2 || body[..2] != [0x1f, 0x8b] {
        return Err(Error::BadBody(format!(
            "body of {} bytes is not gzip (expected gzip-compressed NDJSON, magic 1f 8b)",
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

async fn search(
    State(ix): State<Indexer>,
    Query(params): Query<SearchParams>,
) -> Result<Json<SearchResponse>> {
    let req = params.into_request(chrono::Utc::now())?;
    Ok(Json(ix.search(req).await?))
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
    use axum::http::HeaderValue;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
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
        assert!(err.to_string().contains("not gzip"), "{err}");
        let full = gzip(b"some text that is long enough to matter");
        let err = gunzip_capped(&full[..full.len() - 6], 100).unwrap_err();
        assert!(matches!(err, Error::BadBody(_)), "{err}");
    }

    #[test]
    fn token_accepts_both_headers_and_refuses_others() {
        let mut h = HeaderMap::new();
        assert!(check_token(None, &h).is_ok());
        assert!(matches!(
            check_token(Some("s3"), &h),
            Err(Error::Unauthorized)
        ));
        h.insert(protocol::TOKEN_HEADER, HeaderValue::from_static("s3"));
        assert!(check_token(Some("s3"), &h).is_ok());
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer s3"));
        assert!(check_token(Some("s3"), &h).is_ok());
        assert!(check_token(Some("s4"), &h).is_err());
    }
}
