//! The UI's routes and what they share: the time-range parameters, page rendering and
//! the static assets.
//!
//! Every page is a plain GET whose state is entirely in its URL, so it can be linked,
//! reloaded and used without JavaScript; the live tail is the one part that needs JS.
//! Routes stay under `/`, `/context`, `/slow`, `/tail`, `/trace`, `/apps`, `/hosts`,
//! `/ui/` and `/static/` so they never clash with the indexer, scheduler or ES routes
//! when the binary merges all routers onto one listener.

mod access;
mod actions;
mod cluster;
mod context;
mod download;
mod login;
mod saved;
mod search;
mod slow;
mod tail;
mod trace;

use std::sync::Arc;

use askama::Template;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::{Error, Result};
use crate::AppState;

/// What the browser may do with our pages: scripts and styles from this origin only
/// (style attributes are used for bars, hence `'unsafe-inline'` for styles, never for
/// scripts), no framing, no plugins, forms posting only here.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    frame-ancestors 'none'; form-action 'self'";

pub(crate) fn router(state: Arc<AppState>) -> Router {
    use axum::http::HeaderValue;
    use axum::middleware::from_fn_with_state;
    use tower_http::set_header::SetResponseHeaderLayer;
    let stream = Router::new()
        .route("/ui/tail-stream", get(tail::stream))
        .route_layer(from_fn_with_state(
            state.tail_limit.clone(),
            protocol::http::limit,
        ));
    Router::new()
        .route("/", get(search::page))
        .route("/context", get(context::page))
        .route("/download", get(download::download))
        .route("/ui/fields", get(search::suggest))
        .route("/ui/saved", axum::routing::post(saved::save))
        .route("/ui/saved/delete", axum::routing::post(saved::delete))
        .route("/slow", get(slow::page))
        .route("/tail/{app}", get(tail::page))
        .route("/trace/{id}", get(trace::page))
        .route("/apps", get(cluster::apps))
        .route("/apps/action", axum::routing::post(actions::act))
        .route(
            "/apps/edit",
            get(actions::edit_page).post(actions::edit_submit),
        )
        .route("/hosts", get(cluster::hosts))
        .route("/hosts/action", axum::routing::post(actions::host_act))
        .route("/login", get(login::page).post(login::submit))
        .route("/logout", axum::routing::post(login::logout))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .merge(stream)
        .route_layer(from_fn_with_state(state.clone(), login::gate))
        .with_state(state)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
}

const APP_CSS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/static/app.css"));
const APP_JS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/static/app.js"));

async fn css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Short: assets are compiled in and change with every release of the binary.
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Renders a page template to an HTML response, naming the page if rendering fails.
fn render<T: Template>(page: &'static str, tpl: &T) -> Result<Html<String>> {
    tpl.render()
        .map(Html)
        .map_err(|source| Error::Render { page, source })
}

/// `link` with `tz=utc` added when `utc`: the time-zone choice follows the reader from
/// the search page to a trace or a record's context and back (before any `#fragment`).
pub(crate) fn with_utc(link: String, utc: bool) -> String {
    if !utc {
        return link;
    }
    let (base, fragment) = link.split_at(link.find('#').unwrap_or(link.len()));
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}tz=utc{fragment}")
}

/// Whether a page's `tz` parameter asks for UTC (anything else: the reader's zone).
pub(crate) fn wants_utc(tz: Option<&str>) -> bool {
    tz.map(str::trim) == Some("utc")
}

/// The time presets the search page offers, as (name, indexer `start`).
pub(crate) const PRESETS: [(&str, &str); 5] = [
    ("5m", "now-5m"),
    ("15m", "now-15m"),
    ("1h", "now-1h"),
    ("24h", "now-24h"),
    ("7d", "now-7d"),
];
pub(crate) const DEFAULT_PRESET: &str = "15m";

/// A search time range: either a preset (`range=15m`) or explicit `start`/`end` in any
/// form the indexer accepts (RFC 3339, epoch ms, `now-15m`), passed through unchanged
/// so the indexer is the one judge of what is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimeRange {
    pub(crate) preset: Option<&'static str>,
    pub(crate) start: String,
    pub(crate) end: String,
}

impl TimeRange {
    pub(crate) fn from_params(
        range: Option<&str>,
        start: Option<&str>,
        end: Option<&str>,
    ) -> Result<TimeRange> {
        let start = start.map(str::trim).filter(|s| !s.is_empty());
        let end = end.map(str::trim).filter(|s| !s.is_empty());
        if start.is_some() || end.is_some() {
            return Ok(TimeRange {
                preset: None,
                start: start.unwrap_or("now-15m").to_string(),
                end: end.unwrap_or("now").to_string(),
            });
        }
        let name = range
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .unwrap_or(DEFAULT_PRESET);
        let (name, start) =
            PRESETS
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| Error::BadParam {
                    name: "range",
                    value: name.to_string(),
                    expected: "one of 5m, 15m, 1h, 24h, 7d",
                })?;
        Ok(TimeRange {
            preset: Some(name),
            start: start.to_string(),
            end: "now".to_string(),
        })
    }

    /// The URL parameters that reproduce this range.
    pub(crate) fn params(&self) -> Vec<(&'static str, &str)> {
        match self.preset {
            Some(p) => vec![("range", p)],
            None => vec![("start", self.start.as_str()), ("end", self.end.as_str())],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_defaults_to_15m() {
        let r = TimeRange::from_params(None, None, None).unwrap();
        assert_eq!(r.preset, Some("15m"));
        assert_eq!(r.start, "now-15m");
        assert_eq!(r.end, "now");
    }

    #[test]
    fn explicit_start_end_win_over_presets() {
        let r = TimeRange::from_params(Some("1h"), Some("2026-11-23T10:00:00Z"), None).unwrap();
        assert_eq!(r.preset, None);
        assert_eq!(r.start, "2026-11-23T10:00:00Z");
        assert_eq!(r.end, "now");
        assert_eq!(
            r.params(),
            vec![("start", "2026-11-23T10:00:00Z"), ("end", "now")]
        );
    }

    #[test]
    fn the_utc_choice_is_added_before_the_fragment() {
        assert_eq!(with_utc("/trace/abc".into(), true), "/trace/abc?tz=utc");
        assert_eq!(
            with_utc("/context?task=t&n=5#focus".into(), true),
            "/context?task=t&n=5&tz=utc#focus"
        );
        assert_eq!(with_utc("/trace/abc".into(), false), "/trace/abc");
        assert!(wants_utc(Some(" utc")) && !wants_utc(Some("local")) && !wants_utc(None));
    }

    #[test]
    fn unknown_preset_is_rejected_by_name() {
        let err = TimeRange::from_params(Some("3w"), None, None).unwrap_err();
        assert!(err.to_string().contains("\"3w\""), "{err}");
    }
}
