//! `GET /tail/{app}`: one app's instances live, and `GET /ui/tail-stream`, the SSE proxy
//! that feeds it.
//!
//! The page is a shell; `static/app.js` opens an `EventSource` on the proxy and appends
//! lines with `textContent`. The proxy forwards the indexer's SSE bytes untouched
//! (including `event: dropped` notices) instead of re-encoding events: the indexer
//! already speaks SSE, and passing bytes through keeps the UI independent of how the
//! indexer frames its events. The cost is that the proxy cannot filter or annotate the
//! stream; filtering is done by the indexer through `q`. The indexer's event ids pass
//! through too, and the browser's `Last-Event-ID` is passed back on a reconnect, so an
//! `EventSource` resumes where it left off by itself.
//!
//! The page renders at most `rate` lines per second (default [`DEFAULT_RATE`]) and
//! counts the rest as skipped, next to the indexer's count of dropped lines: the cap
//! is applied in the browser, where the cost is, so the proxy stays a byte pipe.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use askama::Template;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;

use super::render;
use super::search::field_query;
use crate::error::{Error, Result};
use crate::render::{href, valid_app_name};
use crate::{AppState, Page};

/// Lines per second the tail page renders unless the URL says otherwise.
pub(crate) const DEFAULT_RATE: u32 = 200;
/// The highest `rate` accepted: beyond it a browser spends its time on layout.
pub(crate) const MAX_RATE: u32 = 5000;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct TailParams {
    filter: Option<String>,
    /// Kept as text so a bad value is named in the error rather than rejected by serde.
    rate: Option<String>,
}

/// The `rate` parameter: lines per second, 1 to [`MAX_RATE`].
pub(crate) fn parse_rate(raw: Option<&str>) -> Result<u32> {
    match raw.map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(DEFAULT_RATE),
        Some(r) => match r.parse::<u32>() {
            Ok(n) if (1..=MAX_RATE).contains(&n) => Ok(n),
            _ => Err(Error::BadParam {
                name: "rate",
                value: r.to_string(),
                expected: "lines per second, 1 to 5000",
            }),
        },
    }
}

#[derive(Template)]
#[template(path = "tail.html")]
struct TailPage {
    nav: &'static str,
    app: String,
    filter: String,
    rate: u32,
    stream_href: String,
    search_href: String,
}

pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    Path(app): Path<String>,
    Query(p): Query<TailParams>,
) -> Result<Response> {
    state.metrics.hit(Page::Tail);
    if !valid_app_name(&app) {
        return Err(Error::BadAppName(app));
    }
    let rate = parse_rate(p.rate.as_deref())?;
    let filter = p.filter.unwrap_or_default();
    let app_q = field_query("app", &app);
    let stream_q = format!("{app_q} {filter}");
    let page = TailPage {
        nav: "",
        stream_href: href("/ui/tail-stream", &[("q", stream_q.trim())]),
        search_href: href("/", &[("q", stream_q.trim())]),
        app,
        filter,
        rate,
    };
    Ok(render("tail", &page)?.into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct StreamParams {
    q: Option<String>,
}

/// Counts an open stream for as long as its body is alive.
struct OpenStream(Arc<AppState>);

impl OpenStream {
    fn new(state: Arc<AppState>) -> OpenStream {
        state.metrics.tail_streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(state)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.metrics.tail_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) async fn stream(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    Query(p): Query<StreamParams>,
) -> Result<Response> {
    state.metrics.hit(Page::TailStream);
    let q = p.q.unwrap_or_default();
    // An `EventSource` reconnecting sends the last id it saw; the indexer resumes there.
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let upstream = match state.client.tail(q.trim(), last).await {
        Ok(resp) => resp,
        Err(e) => {
            state.metrics.upstream_error(&e);
            return Err(e);
        }
    };
    tracing::debug!(q = %q, "live tail stream opened");
    let open = OpenStream::new(state.clone());
    // Dropping the body (the browser went away) drops the upstream response, which
    // closes the indexer connection; shutdown ends the body so it cannot hold the
    // listener open.
    let body = upstream
        .bytes_stream()
        .take_until(state.shutdown.clone().cancelled_owned())
        .map(move |chunk| {
            let _open = &open;
            chunk
        });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Tells nginx-style proxies in front of us not to buffer the stream.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_defaults_and_is_bounded() {
        assert_eq!(parse_rate(None).unwrap(), DEFAULT_RATE);
        assert_eq!(parse_rate(Some(" ")).unwrap(), DEFAULT_RATE);
        assert_eq!(parse_rate(Some("5")).unwrap(), 5);
        assert_eq!(parse_rate(Some("5000")).unwrap(), MAX_RATE);
        for bad in ["0", "5001", "-1", "fast"] {
            let err = parse_rate(Some(bad)).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
