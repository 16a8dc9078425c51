//! `GET /`: the search page. Query box, app picker, time presets, a histogram of matches
//! and one page of hits, newest first, with an "older" cursor link.
//!
//! The search, the histogram and the app list are fetched concurrently. Only the search
//! is essential: without the histogram or the scheduler the page still shows hits, so
//! an indexer without histograms or a scheduler that is down degrades the page rather
//! than breaking it. A failed search keeps the form on screen with the indexer's own
//! message, so a bad query can be fixed in place.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Duration;
use protocol::{HistogramResponse, Level, LogRecord, SearchResponse, Stream};
use serde::Deserialize;

use super::{render, TimeRange, PRESETS};
use crate::client::{app_name, SearchQuery};
use crate::error::Error;
use crate::render::{
    format_latency, format_ts, highlight, highlight_terms, href, query_app, rfc3339_ms,
    set_query_app, short_task, valid_app_name, valid_trace_id, SafeHtml,
};
use crate::{AppState, Page};

/// Hits per page.
const PAGE_SIZE: u32 = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SearchParams {
    q: Option<String>,
    range: Option<String>,
    start: Option<String>,
    end: Option<String>,
    cursor: Option<String>,
    /// Set by the app picker; folded into `q` by a redirect.
    app: Option<String>,
    /// The picker's value as the page was rendered: the picker only overrides the
    /// typed query when the reader changed it.
    app_was: Option<String>,
}

pub(crate) struct PresetLink {
    label: &'static str,
    href: String,
    active: bool,
}

pub(crate) struct AppOption {
    name: String,
    selected: bool,
}

pub(crate) struct Bar {
    href: String,
    height: String,
    title: String,
}

pub(crate) struct TraceLink {
    id: String,
    href: String,
}

pub(crate) struct Access {
    peer: String,
    callee: String,
    request: String,
    status: String,
    status_class: &'static str,
    latency: String,
}

pub(crate) struct Row {
    time: String,
    host: String,
    host_href: String,
    app: String,
    app_href: String,
    instance: u32,
    task: String,
    task_short: String,
    task_href: String,
    level: &'static str,
    level_class: &'static str,
    stream: &'static str,
    msg: SafeHtml,
    trace: Option<TraceLink>,
    access: Option<Access>,
}

#[derive(Template)]
#[template(path = "search.html")]
struct SearchPage {
    nav: &'static str,
    q: String,
    preset: &'static str,
    start: String,
    end: String,
    presets: Vec<PresetLink>,
    apps: Vec<AppOption>,
    selected_app: String,
    error: Option<String>,
    bars: Vec<Bar>,
    hist_from: String,
    hist_to: String,
    rows: Vec<Row>,
    total: u64,
    older: Option<String>,
    paged: bool,
}

pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    Query(p): Query<SearchParams>,
) -> Response {
    state.metrics.hit(Page::Search);
    let q = p.q.clone().unwrap_or_default().trim().to_string();

    if let Some(app) = p.app.as_deref() {
        let app = app.trim();
        if !app.is_empty() && !valid_app_name(app) {
            return Error::BadAppName(app.to_string()).into_response();
        }
        let picked = app != p.app_was.as_deref().unwrap_or("").trim();
        let q = if picked { set_query_app(&q, app) } else { q };
        let mut params = vec![("q", q.as_str())];
        for (k, v) in [("range", &p.range), ("start", &p.start), ("end", &p.end)] {
            if let Some(v) = v {
                params.push((k, v.as_str()));
            }
        }
        return Redirect::to(&href("/", &params)).into_response();
    }

    let range = TimeRange::from_params(p.range.as_deref(), p.start.as_deref(), p.end.as_deref());
    let (range, range_err) = match range {
        Ok(r) => (r, None),
        Err(e) => (
            TimeRange::from_params(None, None, None).expect("the default preset exists"),
            Some(e),
        ),
    };

    let mut page = SearchPage {
        nav: "search",
        q: q.clone(),
        preset: range.preset.unwrap_or(""),
        start: if range.preset.is_none() {
            range.start.clone()
        } else {
            String::new()
        },
        end: if range.preset.is_none() {
            range.end.clone()
        } else {
            String::new()
        },
        presets: PRESETS
            .iter()
            .map(|(label, _)| PresetLink {
                label,
                href: href("/", &[("q", &q), ("range", label)]),
                active: range.preset == Some(*label),
            })
            .collect(),
        apps: Vec::new(),
        selected_app: query_app(&q).unwrap_or_default(),
        error: None,
        bars: Vec::new(),
        hist_from: String::new(),
        hist_to: String::new(),
        rows: Vec::new(),
        total: 0,
        older: None,
        paged: p.cursor.as_deref().is_some_and(|c| !c.is_empty()),
    };

    let search_req = SearchQuery {
        q: q.clone(),
        start: range.start.clone(),
        end: range.end.clone(),
        limit: PAGE_SIZE,
        cursor: p.cursor.clone().filter(|c| !c.is_empty()),
    };
    let client = &state.client;
    let (search, histogram, apps) = tokio::join!(
        async {
            match range_err {
                Some(e) => Err(e),
                None => client.search(&search_req).await,
            }
        },
        client.histogram(&q, &range.start, &range.end),
        client.apps(),
    );

    let selected = query_app(&q);
    match apps {
        Ok(apps) => {
            let mut names: Vec<String> = apps.iter().map(|a| a.name().to_string()).collect();
            if let Some(sel) = &selected {
                if !names.contains(sel) {
                    names.push(sel.clone());
                }
            }
            names.sort();
            names.dedup();
            page.apps = names
                .into_iter()
                .map(|name| AppOption {
                    selected: selected.as_deref() == Some(name.as_str()),
                    name,
                })
                .collect();
        }
        Err(e) => {
            state.metrics.upstream_error(&e);
            tracing::warn!(error = %e, "app list for the search page unavailable");
            page.apps = selected
                .into_iter()
                .map(|name| AppOption {
                    name,
                    selected: true,
                })
                .collect();
        }
    }

    let status = match search {
        Ok(resp) => {
            fill_results(&mut page, &range, resp);
            match histogram {
                Ok(h) => fill_histogram(&mut page, &h),
                Err(e) => {
                    state.metrics.upstream_error(&e);
                    tracing::warn!(error = %e, "histogram for the search page unavailable");
                }
            }
            axum::http::StatusCode::OK
        }
        Err(e) => {
            state.metrics.upstream_error(&e);
            if e.status().is_server_error() {
                tracing::warn!(q = %q, error = %e, "search failed");
            }
            page.error = Some(e.to_string());
            e.status()
        }
    };

    match render("search", &page) {
        Ok(html) => (status, html).into_response(),
        Err(e) => e.into_response(),
    }
}

fn fill_results(page: &mut SearchPage, range: &TimeRange, resp: SearchResponse) {
    let terms = highlight_terms(&page.q);
    page.total = resp.total;
    page.rows = resp.hits.iter().map(|r| row(r, &terms, range)).collect();
    page.older = resp.next.filter(|n| !n.is_empty()).map(|next| {
        let mut params = vec![("q", page.q.as_str())];
        params.extend(range.params());
        params.push(("cursor", next.as_str()));
        href("/", &params)
    });
}

fn fill_histogram(page: &mut SearchPage, h: &HistogramResponse) {
    let (Some(first), Some(last)) = (h.buckets.first(), h.buckets.last()) else {
        return;
    };
    let interval_ms = match h.interval_ms {
        0 => h
            .buckets
            .get(1)
            .map(|b| (b.ts - first.ts).num_milliseconds().max(1) as u64)
            .unwrap_or(60_000),
        n => n,
    };
    let interval = Duration::milliseconds(interval_ms.min(i64::MAX as u64) as i64);
    let max = h.buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    page.bars = h
        .buckets
        .iter()
        .map(|b| {
            let pct = b.count as f64 / max as f64 * 100.0;
            // A bucket with any match stays visible next to a huge neighbour.
            let pct = if b.count > 0 { pct.max(2.0) } else { 0.0 };
            let start = rfc3339_ms(b.ts);
            let end = rfc3339_ms(b.ts + interval);
            Bar {
                href: href("/", &[("q", &page.q), ("start", &start), ("end", &end)]),
                height: format!("{pct:.1}"),
                title: format!("{}: {} matches", format_ts(b.ts), b.count),
            }
        })
        .collect();
    page.hist_from = format_ts(first.ts);
    page.hist_to = format_ts(last.ts + interval);
}

/// `field:value`, quoting the value when it is not a plain word.
pub(crate) fn field_query(field: &str, value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if plain {
        format!("{field}:{value}")
    } else {
        format!(
            "{field}:\"{}\"",
            value.replace('\\', "\\\\").replace('"', "\\\"")
        )
    }
}

pub(crate) fn level_class(level: Option<Level>) -> &'static str {
    match level {
        Some(Level::Error | Level::Fatal) => "lvl-error",
        Some(Level::Warn) => "lvl-warn",
        Some(Level::Info) | None => "lvl-info",
        Some(Level::Debug | Level::Trace) => "lvl-debug",
    }
}

pub(crate) fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(500..) => "st-5xx",
        Some(400..500) => "st-4xx",
        _ => "st-ok",
    }
}

fn row(r: &LogRecord, terms: &[String], range: &TimeRange) -> Row {
    let search = |field: &str, value: &str| {
        let q = field_query(field, value);
        let mut params = vec![("q", q.as_str())];
        params.extend(range.params());
        href("/", &params)
    };
    let access = (r.stream == Stream::Access).then(|| Access {
        peer: r.peer_app.clone().unwrap_or_else(|| "client".to_string()),
        callee: r.app.clone(),
        request: format!(
            "{} {}",
            r.method.as_deref().unwrap_or(""),
            r.path.as_deref().unwrap_or("")
        )
        .trim()
        .to_string(),
        status: r.status.map(|s| s.to_string()).unwrap_or_default(),
        status_class: status_class(r.status),
        latency: r.latency_ms.map(format_latency).unwrap_or_default(),
    });
    Row {
        time: format_ts(r.ts),
        host: r.host.clone(),
        host_href: search("host", &r.host),
        app: r.app.clone(),
        app_href: search("app", app_name(&r.app)),
        instance: r.instance,
        task: r.task.clone(),
        task_short: short_task(&r.app, &r.task),
        task_href: search("task", &r.task),
        level: r.level.map(Level::as_str).unwrap_or(""),
        level_class: level_class(r.level),
        stream: r.stream.as_str(),
        msg: highlight(&r.msg, terms),
        trace: r
            .trace_id
            .as_deref()
            .filter(|id| valid_trace_id(id))
            .map(|id| TraceLink {
                id: id.to_string(),
                href: format!("/trace/{id}"),
            }),
        access,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_queries_quote_odd_values() {
        assert_eq!(field_query("host", "node-1"), "host:node-1");
        assert_eq!(field_query("host", "a b"), "host:\"a b\"");
        assert_eq!(field_query("x", "a\"b"), "x:\"a\\\"b\"");
    }

    #[test]
    fn levels_map_to_classes() {
        assert_eq!(level_class(Some(Level::Fatal)), "lvl-error");
        assert_eq!(level_class(Some(Level::Warn)), "lvl-warn");
        assert_eq!(level_class(Some(Level::Trace)), "lvl-debug");
        assert_eq!(level_class(None), "lvl-info");
    }
}
