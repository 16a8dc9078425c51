//! `GET /`: the search page. Query box, app picker, time presets, a histogram of matches
//! and one page of hits, newest first, with an "older" cursor link.
//!
//! The search and the app list are fetched concurrently, then the histogram and the
//! field counts (`page` says why not all at once). Only the search is essential:
//! without the histogram or the scheduler the page still shows hits, so an indexer
//! without histograms or a scheduler that is down degrades the page rather than
//! breaking it. A failed search keeps the form on screen with the indexer's own
//! message, so a bad query can be fixed in place.
//!
//! The page is streamed in two parts (issue 6, first paint under 300 ms over 10M
//! records): the form and the rows as soon as the search answers, then the histogram
//! and the field sidebar, whose counts over every match take several times longer. The
//! template puts the rows first in the document and the grid puts the others back in
//! place; both parts come from rendering the same template, cut at [`REST_MARKER`].
//! The trade-off: once the rows are sent the status is 200, so a failing histogram or
//! sidebar can only be left out (as it already was), and the page is rendered twice.

use std::convert::Infallible;
use std::sync::Arc;

use askama::Template;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{Duration, SecondsFormat};
use futures::StreamExt;
use protocol::{HistogramResponse, Level, LogRecord, SearchResponse, Stream, TraceId};
use serde::Deserialize;

use super::access::AccessView;
use super::{render, TimeRange, PRESETS};
use crate::client::{app_name, FieldsResponse, SearchQuery};
use crate::error::Error;
use crate::render::{
    escape_html, format_ts, highlight, highlight_terms, href, query_app, rfc3339_ms, set_query_app,
    short_task, tokenize, valid_app_name, SafeHtml,
};
use crate::{AppState, Page};

/// Hits per page.
const PAGE_SIZE: u32 = 100;
/// Values listed per field in the sidebar.
const SIDEBAR_VALUES: u32 = 10;
/// Lines shown on each side of a record by its "context" link.
pub(crate) const CONTEXT_LINES: u32 = 20;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SearchParams {
    pub(crate) q: Option<String>,
    pub(crate) range: Option<String>,
    pub(crate) start: Option<String>,
    pub(crate) end: Option<String>,
    cursor: Option<String>,
    /// Set by the app picker; folded into `q` by a redirect.
    app: Option<String>,
    /// The picker's value as the page was rendered: the picker only overrides the
    /// typed query when the reader changed it.
    app_was: Option<String>,
    /// `newest` (default), `oldest` or `slowest`.
    sort: Option<String>,
    /// `utc` shows times in UTC; anything else, the browser's own zone (with JS).
    tz: Option<String>,
    /// Extra columns, comma-separated field names as the sidebar lists them.
    cols: Option<String>,
    /// `/download` only: `ndjson` (default) or `csv`.
    pub(crate) format: Option<String>,
}

/// Most extra columns a page shows.
const MAX_COLS: usize = 8;

/// The order of the hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SortBy {
    #[default]
    Newest,
    Oldest,
    Slowest,
}

impl SortBy {
    const ALL: [SortBy; 3] = [SortBy::Newest, SortBy::Oldest, SortBy::Slowest];

    fn parse(s: Option<&str>) -> Result<SortBy, Error> {
        match s.map(str::trim).unwrap_or("") {
            "" | "newest" => Ok(SortBy::Newest),
            "oldest" => Ok(SortBy::Oldest),
            "slowest" => Ok(SortBy::Slowest),
            other => Err(Error::BadParam {
                name: "sort",
                value: other.to_string(),
                expected: "newest, oldest or slowest",
            }),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            SortBy::Newest => "newest",
            SortBy::Oldest => "oldest",
            SortBy::Slowest => "slowest",
        }
    }

    /// The indexer's name for it (`None`: its default, newest first).
    fn api(self) -> Option<String> {
        match self {
            SortBy::Newest => None,
            SortBy::Oldest => Some("oldest".into()),
            SortBy::Slowest => Some("latency_desc".into()),
        }
    }

    fn label(self) -> &'static str {
        match self {
            SortBy::Newest => "newest first",
            SortBy::Oldest => "oldest first",
            SortBy::Slowest => "slowest first",
        }
    }
}

/// How the reader looks at the results: the order, the time zone and the extra
/// columns. Kept in every link the page makes, so a filter or a zoom keeps the view.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    sort: SortBy,
    utc: bool,
    cols: Vec<String>,
    /// `cols` as the URL carries it.
    cols_param: String,
}

impl View {
    pub(crate) fn columns(&self) -> &[String] {
        &self.cols
    }

    /// The indexer's `sort` for this view.
    pub(crate) fn sort_api(&self) -> Option<String> {
        self.sort.api()
    }

    pub(crate) fn from_params(p: &SearchParams) -> Result<View, Error> {
        let mut cols: Vec<String> = Vec::new();
        for c in p.cols.as_deref().unwrap_or("").split(',').map(str::trim) {
            if c.is_empty() || cols.iter().any(|x| x == c) {
                continue;
            }
            let ok = c.len() <= 64
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'));
            if !ok || cols.len() == MAX_COLS {
                return Err(Error::BadParam {
                    name: "cols",
                    value: c.to_string(),
                    expected: "at most 8 field names (letters, digits, '_', '.', '-')",
                });
            }
            cols.push(c.to_string());
        }
        Ok(View {
            sort: SortBy::parse(p.sort.as_deref())?,
            utc: super::wants_utc(p.tz.as_deref()),
            cols_param: cols.join(","),
            cols,
        })
    }

    /// The URL parameters that differ from the default view.
    fn params(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if self.sort != SortBy::Newest {
            out.push(("sort", self.sort.as_str()));
        }
        if self.utc {
            out.push(("tz", "utc"));
        }
        if !self.cols.is_empty() {
            out.push(("cols", self.cols_param.as_str()));
        }
        out
    }

    /// This view with column `name` added, or removed when shown.
    fn toggle_col(&self, name: &str) -> View {
        let mut cols = self.cols.clone();
        match cols.iter().position(|c| c == name) {
            Some(i) => {
                cols.remove(i);
            }
            None if cols.len() < MAX_COLS => cols.push(name.to_string()),
            None => {}
        }
        View {
            cols_param: cols.join(","),
            cols,
            ..self.clone()
        }
    }
}

/// The range and the view together: what every link of the page carries besides `q`.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    range: &'a TimeRange,
    view: &'a View,
}

impl<'a> Ctx<'a> {
    fn params(&self) -> Vec<(&'static str, &'a str)> {
        let mut p = self.range.params();
        p.extend(self.view.params());
        p
    }
}

/// A link of the view switches (sort, time zone).
pub(crate) struct ViewLink {
    label: &'static str,
    href: String,
    active: bool,
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
    /// The bar's matches by level, bottom up; empty when the indexer gave no split.
    segs: Vec<Seg>,
    /// The bucket's bounds (RFC 3339), for drag-to-zoom across bars.
    start: String,
    end: String,
}

/// One level's share of a histogram bar.
pub(crate) struct Seg {
    class: &'static str,
    /// Percent of the bar's height.
    height: String,
}

/// A level in the histogram's legend, with its matches over the whole range.
pub(crate) struct LegendItem {
    class: &'static str,
    label: &'static str,
    count: u64,
}

/// Levels as stacked in a bar, bottom up (errors on top, where the eye goes), with
/// the class that colours them; "" is a record without a level.
const STACK: [(&str, &str, &str); 7] = [
    ("", "none", "lvl-none"),
    ("trace", "trace", "lvl-debug"),
    ("debug", "debug", "lvl-debug"),
    ("info", "info", "lvl-info"),
    ("warn", "warn", "lvl-warn"),
    ("error", "error", "lvl-error"),
    ("fatal", "fatal", "lvl-fatal"),
];

/// One field of an expanded row; `filters` is `None` for fields that make no sense as
/// a filter (the time, the message, a float latency).
pub(crate) struct Detail {
    name: String,
    value: String,
    filters: Option<Filters>,
}

/// Links that add `field:value` to the query, or its exclusion.
pub(crate) struct Filters {
    include: String,
    exclude: String,
}

/// A field of the sidebar with its top values among the matches.
pub(crate) struct SideField {
    name: String,
    /// Adds this field as a column, or removes it when shown.
    col_href: String,
    is_col: bool,
    values: Vec<SideValue>,
    /// Every value seen once (ids, timings): listed folded, as filtering on one of them
    /// is rarely what the reader wants.
    distinct: bool,
}

pub(crate) struct SideValue {
    value: String,
    count: u64,
    filters: Filters,
    /// The query already requires this value.
    active: bool,
}

pub(crate) struct TraceLink {
    id: String,
    href: String,
}

pub(crate) struct Row {
    time: String,
    /// RFC 3339 UTC, for the script that shows the reader's own zone.
    ts: String,
    /// Values of the extra columns, in the view's order (empty when absent).
    cols: Vec<String>,
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
    access: Option<AccessView>,
    details: Vec<Detail>,
    context_href: String,
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
    /// The same bounds in RFC 3339, for the script that shows the reader's zone.
    hist_from_ts: String,
    hist_to_ts: String,
    legend: Vec<LegendItem>,
    rows: Vec<Row>,
    total: u64,
    older: Option<String>,
    paged: bool,
    fields: Vec<SideField>,
    slow_href: String,
    /// `/download` of this result as NDJSON and as CSV.
    download_ndjson: String,
    download_csv: String,
    download_cap: usize,
    /// `/ui/fields` for the query box's autocomplete, in this range.
    suggest_href: String,
    /// The extra columns' names, in order.
    cols: Vec<String>,
    /// Hidden inputs that keep the view through a form submit.
    view_params: Vec<(&'static str, String)>,
    sorts: Vec<ViewLink>,
    zones: Vec<ViewLink>,
    utc: bool,
    /// Every saved search, newest first.
    saved: Vec<SavedLink>,
    /// The caller may save and delete searches (the deploy role).
    can_save: bool,
    /// Saved searches outlive a restart of the web (it has a data dir).
    saved_kept: bool,
    /// What the save form sends besides the name: this search's parameters.
    save_params: Vec<(&'static str, String)>,
}

/// A saved search as the page lists it.
pub(crate) struct SavedLink {
    name: String,
    href: String,
    query: String,
    /// This page is that search.
    current: bool,
}

pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    caller: Option<axum::Extension<protocol::http::Caller>>,
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
        // The view too (sort, zone, columns): the form carries it as hidden inputs.
        for (k, v) in [
            ("range", &p.range),
            ("start", &p.start),
            ("end", &p.end),
            ("sort", &p.sort),
            ("tz", &p.tz),
            ("cols", &p.cols),
        ] {
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
    let (view, range_err) = match View::from_params(&p) {
        Ok(v) => (v, range_err),
        Err(e) => (View::default(), range_err.or(Some(e))),
    };
    let ctx = Ctx {
        range: &range,
        view: &view,
    };
    let with_view = |base: Vec<(&'static str, &str)>| {
        let mut params: Vec<(&str, &str)> = vec![("q", q.as_str())];
        params.extend(base);
        params.extend(view.params());
        href("/", &params)
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
                href: with_view(vec![("range", label)]),
                active: range.preset == Some(*label),
            })
            .collect(),
        download_ndjson: download_href(&q, &range, &view, "ndjson"),
        download_csv: download_href(&q, &range, &view, "csv"),
        download_cap: super::download::MAX_DOWNLOAD,
        suggest_href: href("/ui/fields", &range.params()),
        cols: view.cols.clone(),
        view_params: view
            .params()
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
        sorts: SortBy::ALL
            .iter()
            .map(|&s| ViewLink {
                label: s.label(),
                href: search_href(
                    &q,
                    Ctx {
                        range: &range,
                        view: &View {
                            sort: s,
                            ..view.clone()
                        },
                    },
                ),
                active: view.sort == s,
            })
            .collect(),
        zones: [("local time", false), ("UTC", true)]
            .iter()
            .map(|&(label, utc)| ViewLink {
                label,
                href: search_href(
                    &q,
                    Ctx {
                        range: &range,
                        view: &View {
                            utc,
                            ..view.clone()
                        },
                    },
                ),
                active: view.utc == utc,
            })
            .collect(),
        utc: view.utc,
        saved: Vec::new(),
        can_save: super::saved::may_save(caller.as_ref()),
        saved_kept: state.saved.persistent(),
        save_params: {
            let mut params = vec![("q", q.as_str())];
            params.extend(range.params());
            params.extend(view.params().into_iter().filter(|(k, _)| *k != "tz"));
            params
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect()
        },
        apps: Vec::new(),
        selected_app: query_app(&q).unwrap_or_default(),
        error: None,
        bars: Vec::new(),
        hist_from: String::new(),
        hist_to: String::new(),
        hist_from_ts: String::new(),
        hist_to_ts: String::new(),
        legend: Vec::new(),
        rows: Vec::new(),
        total: 0,
        older: None,
        paged: p.cursor.as_deref().is_some_and(|c| !c.is_empty()),
        fields: Vec::new(),
        slow_href: {
            let mut params = vec![("q", q.as_str())];
            params.extend(range.params());
            href("/slow", &params)
        },
    };

    let here = saved_params(
        &q,
        p.range.as_deref(),
        p.start.as_deref(),
        p.end.as_deref(),
        p.sort.as_deref(),
        p.cols.as_deref(),
    )
    .ok();
    page.saved = state
        .saved
        .list()
        .await
        .into_iter()
        .map(|s| SavedLink {
            current: here.as_ref() == Some(&s.params),
            href: s.href(),
            query: s.query().to_string(),
            name: s.name,
        })
        .collect();

    let search_req = SearchQuery {
        q: q.clone(),
        start: range.start.clone(),
        end: range.end.clone(),
        limit: PAGE_SIZE,
        cursor: p.cursor.clone().filter(|c| !c.is_empty()),
        sort: view.sort.api(),
    };
    let client = &state.client;
    let (search, apps) = tokio::join!(
        async {
            match range_err {
                Some(e) => Err(e),
                None => client.search(&search_req).await,
            }
        },
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

    match search {
        Ok(resp) => fill_results(&mut page, ctx, resp),
        Err(e) => {
            // Not streamed: the status says whose fault it was, and nothing else is
            // worth asking for.
            state.metrics.upstream_error(&e);
            if e.status().is_server_error() {
                tracing::warn!(q = %q, error = %e, "search failed");
            }
            page.error = Some(e.to_string());
            return match render("search", &page) {
                Ok(html) => (e.status(), html).into_response(),
                Err(e) => e.into_response(),
            };
        }
    }

    // The histogram and the field counts start only now that the rows are ready: over
    // millions of records they are the slow part, and run alongside the search they
    // took the indexer's cores from it (on 2 cores over 10M records the search went
    // from 50 ms alone to 230-490 ms). They are awaited once the rows are on their way.
    let histogram = Pending(tokio::spawn({
        let (client, q, start, end) = (
            client.clone(),
            q.clone(),
            range.start.clone(),
            range.end.clone(),
        );
        async move { client.histogram(&q, &start, &end).await }
    }));
    let fields = Pending(tokio::spawn({
        let (client, q, start, end) = (
            client.clone(),
            q.clone(),
            range.start.clone(),
            range.end.clone(),
        );
        async move { client.fields(&q, &start, &end, SIDEBAR_VALUES).await }
    }));
    let Html(head) = match render("search", &page) {
        Ok(html) => html,
        Err(e) => return e.into_response(),
    };
    let Some(cut) = head.find(REST_MARKER) else {
        // Only a template edit can get here; the page is still whole, minus the extras.
        tracing::warn!("search template lacks its stream marker; sent without histogram");
        return Html(head).into_response();
    };
    let first = Bytes::from(head).slice(..cut);
    let rest = async move {
        let ctx = Ctx {
            range: &range,
            view: &view,
        };
        match histogram.finish().await {
            Ok(h) => fill_histogram(&mut page, ctx, &h),
            Err(e) => {
                state.metrics.upstream_error(&e);
                tracing::warn!(error = %e, "histogram for the search page unavailable");
            }
        }
        match fields.finish().await {
            Ok(f) => page.fields = side_fields(&page.q, ctx, f),
            Err(e) => {
                state.metrics.upstream_error(&e);
                tracing::warn!(error = %e, "field sidebar for the search page unavailable");
            }
        }
        // The part before the marker is the same as in the first render (it depends on
        // nothing awaited since), so only what follows the marker is sent.
        let html = match render("search", &page) {
            Ok(Html(html)) => html,
            Err(e) => {
                tracing::warn!(error = %e, "search page failed after its rows were sent");
                format!(
                    "<p class=\"error\" role=\"alert\">{}</p></main></body></html>\n",
                    escape_html(&e.to_string())
                )
            }
        };
        let at = html.find(REST_MARKER).unwrap_or(0);
        Ok::<_, Infallible>(Bytes::from(html).slice(at..))
    };
    let body = futures::stream::once(async move { Ok::<_, Infallible>(first) })
        .chain(futures::stream::once(rest));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Tells nginx-style proxies in front of us to pass the rows on at once.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Where the streamed search page is cut: everything before it goes out as soon as the
/// search answers, the rest once the histogram and the field counts are in.
const REST_MARKER: &str = "<!--sandtrail:rest-->";

/// An upstream call running on its own task, cancelled if the page stops waiting for
/// it (the browser went away mid-stream).
struct Pending<T>(tokio::task::JoinHandle<crate::Result<T>>);

impl<T> Pending<T> {
    async fn finish(mut self) -> crate::Result<T> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(e) => Err(Error::Internal(format!("upstream call task failed: {e}"))),
        }
    }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn fill_results(page: &mut SearchPage, ctx: Ctx, resp: SearchResponse) {
    let terms = highlight_terms(&page.q);
    page.total = resp.total;
    page.rows = resp
        .hits
        .iter()
        .map(|r| row(r, &terms, &page.q, ctx))
        .collect();
    page.older = resp.next.filter(|n| !n.is_empty()).map(|next| {
        let mut params = vec![("q", page.q.as_str())];
        params.extend(ctx.params());
        params.push(("cursor", next.as_str()));
        href("/", &params)
    });
}

fn fill_histogram(page: &mut SearchPage, ctx: Ctx, h: &HistogramResponse) {
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
            let mut params = vec![("q", page.q.as_str()), ("start", &start), ("end", &end)];
            params.extend(ctx.view.params());
            let split: Vec<String> = STACK
                .iter()
                .rev()
                .filter_map(|(key, label, _)| b.by.get(*key).map(|n| format!("{label} {n}")))
                .collect();
            Bar {
                href: href("/", &params),
                height: format!("{pct:.1}"),
                title: if split.is_empty() {
                    format!("{}: {} matches", format_ts(b.ts), b.count)
                } else {
                    format!(
                        "{}: {} matches ({})",
                        format_ts(b.ts),
                        b.count,
                        split.join(", ")
                    )
                },
                segs: stack(&b.by),
                start,
                end,
            }
        })
        .collect();
    page.legend = STACK
        .iter()
        .rev()
        .filter_map(|&(key, label, class)| {
            let count: u64 = h.buckets.iter().filter_map(|b| b.by.get(key)).sum();
            (count > 0).then_some(LegendItem {
                class,
                label,
                count,
            })
        })
        .collect();
    page.hist_from = format_ts(first.ts);
    page.hist_to = format_ts(last.ts + interval);
    page.hist_from_ts = rfc3339_ms(first.ts);
    page.hist_to_ts = rfc3339_ms(last.ts + interval);
}

/// A bar's segments, bottom up, in percent of the bar; levels the stack does not know
/// count with the records without one.
fn stack(by: &std::collections::BTreeMap<String, u64>) -> Vec<Seg> {
    let total: u64 = by.values().sum();
    if total == 0 {
        return Vec::new();
    }
    let known = |k: &str| STACK.iter().any(|s| s.0 == k);
    let other: u64 = by.iter().filter(|(k, _)| !known(k)).map(|(_, n)| n).sum();
    STACK
        .iter()
        .filter_map(|&(key, _, class)| {
            let n = by.get(key).copied().unwrap_or(0) + if key.is_empty() { other } else { 0 };
            (n > 0).then(|| Seg {
                class,
                height: format!("{:.1}", n as f64 / total as f64 * 100.0),
            })
        })
        .collect()
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

/// `query` with `field:value` (or `-field:value` when `exclude`) added as one more
/// AND-ed term: what a + or − link does. An existing inclusion or exclusion of the same
/// value is replaced, so flipping a filter never leaves both.
pub(crate) fn add_filter(query: &str, field: &str, value: &str, exclude: bool) -> String {
    let term = field_query(field, value);
    let negated = format!("-{term}");
    let mut parts: Vec<String> = tokenize(query)
        .into_iter()
        .filter(|t| *t != term && *t != negated && *t != format!("NOT {term}"))
        .collect();
    parts.push(if exclude { negated } else { term });
    parts.join(" ")
}

/// The `/download` of `query`'s result in `format`, in the page's range and order.
fn download_href(query: &str, range: &TimeRange, view: &View, format: &str) -> String {
    let mut params = vec![("q", query)];
    params.extend(range.params());
    params.extend(view.params());
    params.push(("format", format));
    href("/download", &params)
}

/// The parameters a saved search keeps: the query, the range, the order and the
/// columns, each checked as the page checks them; not the time zone, which is each
/// reader's own choice.
pub(crate) fn saved_params(
    q: &str,
    range: Option<&str>,
    start: Option<&str>,
    end: Option<&str>,
    sort: Option<&str>,
    cols: Option<&str>,
) -> Result<Vec<(String, String)>, Error> {
    let q = q.trim();
    if q.len() > crate::saved::MAX_QUERY {
        return Err(Error::BadParam {
            name: "q",
            value: format!("{}…", q.chars().take(40).collect::<String>()),
            expected: "a query of at most 4096 bytes to save",
        });
    }
    let range = TimeRange::from_params(range, start, end)?;
    let view = View::from_params(&SearchParams {
        sort: sort.map(String::from),
        cols: cols.map(String::from),
        ..SearchParams::default()
    })?;
    let mut params = vec![("q", q)];
    params.extend(range.params());
    params.extend(view.params().into_iter().filter(|(k, _)| *k != "tz"));
    Ok(params
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The search page's URL for `query` in the range and view of `ctx`.
fn search_href(query: &str, ctx: Ctx) -> String {
    let mut params = vec![("q", query)];
    params.extend(ctx.params());
    href("/", &params)
}

fn filters(query: &str, ctx: Ctx, field: &str, value: &str) -> Filters {
    Filters {
        include: search_href(&add_filter(query, field, value, false), ctx),
        exclude: search_href(&add_filter(query, field, value, true), ctx),
    }
}

/// The record's optional text fields by name, as rows and columns show them.
fn optional_fields(r: &LogRecord) -> [(&'static str, &Option<String>); 7] {
    [
        ("trace_id", &r.trace_id),
        ("span_id", &r.span_id),
        ("parent_span_id", &r.parent_span_id),
        ("method", &r.method),
        ("path", &r.path),
        ("peer_host", &r.peer_host),
        ("peer_app", &r.peer_app),
    ]
}

/// The value a column named `name` shows for `r`: a record field, or one of `fields`
/// (with or without the `fields.` prefix the sidebar may use).
pub(crate) fn column_value(r: &LogRecord, name: &str) -> String {
    if let Some((_, v)) = optional_fields(r).into_iter().find(|(n, _)| *n == name) {
        return v.clone().unwrap_or_default();
    }
    match name {
        "host" => r.host.clone(),
        "app" => r.app.clone(),
        "task" => r.task.clone(),
        "instance" => r.instance.to_string(),
        "stream" => r.stream.as_str().to_string(),
        "level" => r.level.map(|l| l.as_str().to_string()).unwrap_or_default(),
        "status" => r.status.map(|s| s.to_string()).unwrap_or_default(),
        "latency_ms" => r
            .latency_ms
            .map(|l| format!("{}", (l * 1000.0).round() / 1000.0))
            .unwrap_or_default(),
        "source" => r.source.clone(),
        "offset" => r.offset.to_string(),
        other => match r.fields.get(other.strip_prefix("fields.").unwrap_or(other)) {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        },
    }
}

fn side_fields(query: &str, ctx: Ctx, resp: FieldsResponse) -> Vec<SideField> {
    let tokens = tokenize(query);
    resp.fields
        .into_iter()
        .filter(|f| !f.values.is_empty() && !f.field.is_empty())
        .map(|f| SideField {
            distinct: f.values.len() > 3 && f.values.iter().all(|v| v.count <= 1),
            values: f
                .values
                .into_iter()
                .filter(|v| !v.value.is_empty())
                .map(|v| SideValue {
                    active: tokens.contains(&field_query(&f.field, &v.value)),
                    filters: filters(query, ctx, &f.field, &v.value),
                    value: v.value,
                    count: v.count,
                })
                .collect(),
            is_col: ctx.view.cols.contains(&f.field),
            col_href: search_href(
                query,
                Ctx {
                    range: ctx.range,
                    view: &ctx.view.toggle_col(&f.field),
                },
            ),
            name: f.field,
        })
        .collect()
}

/// Every field of `r` as the expanded row lists it.
fn details(r: &LogRecord, query: &str, ctx: Ctx) -> Vec<Detail> {
    let mut out = Vec::new();
    let mut push = |name: &str, value: String, filterable: bool| {
        if value.is_empty() {
            return;
        }
        out.push(Detail {
            filters: filterable.then(|| filters(query, ctx, name, &value)),
            name: name.to_string(),
            value,
        });
    };
    push("ts", rfc3339_ms(r.ts), false);
    push("host", r.host.clone(), true);
    push("app", r.app.clone(), true);
    push("task", r.task.clone(), true);
    push("instance", r.instance.to_string(), true);
    push("stream", r.stream.as_str().to_string(), true);
    if let Some(l) = r.level {
        push("level", l.as_str().to_string(), true);
    }
    for (name, v) in optional_fields(r) {
        if let Some(v) = v {
            push(name, v.clone(), true);
        }
    }
    if let Some(s) = r.status {
        push("status", s.to_string(), true);
    }
    if let Some(l) = r.latency_ms {
        // Rounded to the microsecond: the float's full expansion is noise to a reader.
        push(
            "latency_ms",
            format!("{}", (l * 1000.0).round() / 1000.0),
            false,
        );
    }
    for (k, v) in &r.fields {
        let (text, scalar) = match v {
            serde_json::Value::String(s) => (s.clone(), true),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => (v.to_string(), true),
            other => (other.to_string(), false),
        };
        push(&format!("fields.{k}"), text, scalar);
    }
    push("source", r.source.clone(), false);
    push("offset", r.offset.to_string(), false);
    out
}

/// The context page for `r`: the lines of its task around it.
pub(crate) fn context_href(r: &LogRecord) -> String {
    context_href_n(r, CONTEXT_LINES)
}

/// [`context_href`] with `n` lines either side (left out of the URL when default).
///
/// The time keeps every digit the record has: the indexer finds the record by its
/// exact time, and a link rounded to milliseconds found nothing for records stamped
/// with microseconds.
pub(crate) fn context_href_n(r: &LogRecord, n: u32) -> String {
    let offset = r.offset.to_string();
    let n = if n == CONTEXT_LINES {
        String::new()
    } else {
        n.to_string()
    };
    href(
        "/context",
        &[
            ("task", r.task.as_str()),
            (
                "ts",
                r.ts.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_str(),
            ),
            ("source", r.source.as_str()),
            ("offset", offset.as_str()),
            ("n", n.as_str()),
        ],
    ) + "#focus"
}

fn row(r: &LogRecord, terms: &[String], query: &str, ctx: Ctx) -> Row {
    let search = |field: &str, value: &str| search_href(&field_query(field, value), ctx);
    let access = (r.stream == Stream::Access).then(|| AccessView::of(r));
    Row {
        time: format_ts(r.ts),
        ts: rfc3339_ms(r.ts),
        cols: ctx.view.cols.iter().map(|c| column_value(r, c)).collect(),
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
            .filter(|id| TraceId::is_valid(id))
            .map(|id| TraceLink {
                id: id.to_string(),
                href: super::with_utc(format!("/trace/{id}"), ctx.view.utc),
            }),
        access,
        details: details(r, query, ctx),
        context_href: super::with_utc(context_href(r), ctx.view.utc),
    }
}

/// Values per field the query box suggests.
const SUGGEST_VALUES: u32 = 20;

/// `GET /ui/fields`: the field names and top values of the range, as JSON, for the
/// query box's autocomplete (app.js). Over the whole range rather than the current
/// query, so that a value the query excludes can still be suggested.
pub(crate) async fn suggest(
    State(state): State<Arc<AppState>>,
    Query(p): Query<SearchParams>,
) -> crate::Result<axum::Json<FieldsResponse>> {
    let range = TimeRange::from_params(p.range.as_deref(), p.start.as_deref(), p.end.as_deref())?;
    let fields = state
        .client
        .fields("", &range.start, &range.end, SUGGEST_VALUES)
        .await
        .inspect_err(|e| state.metrics.upstream_error(e))?;
    Ok(axum::Json(fields))
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
    fn filters_add_terms_and_flip_exclusions() {
        assert_eq!(add_filter("", "host", "node-1", false), "host:node-1");
        assert_eq!(
            add_filter("app:fib \"timed out\"", "host", "node 1", true),
            "app:fib \"timed out\" -host:\"node 1\""
        );
        // Flipping replaces; adding twice does not duplicate.
        assert_eq!(
            add_filter("x -level:info", "level", "info", false),
            "x level:info"
        );
        assert_eq!(
            add_filter("x level:info", "level", "info", false),
            "x level:info"
        );
    }

    #[test]
    fn expanded_rows_list_every_field_with_filters_where_they_make_sense() {
        let meta = protocol::TaskMeta {
            host: "node-1".into(),
            app: "fib".into(),
            task: "fib.1".into(),
            instance: 2,
            ports: vec![],
        };
        let ts = "2026-11-23T10:00:00Z".parse().unwrap();
        let mut r = LogRecord::new(ts, &meta, Stream::Stdout, "hello");
        r.fields.insert("user".into(), serde_json::json!("al ice"));
        r.fields.insert("n".into(), serde_json::json!(7));
        r.latency_ms = Some(1.5);
        r.source = "fib.1/stdout".into();
        r.offset = 42;
        let range = TimeRange::from_params(None, None, None).unwrap();
        let view = View::default();
        let ctx = Ctx {
            range: &range,
            view: &view,
        };
        let d = details(&r, "app:fib", ctx);
        let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ts",
                "host",
                "app",
                "task",
                "instance",
                "stream",
                "latency_ms",
                "fields.n",
                "fields.user",
                "source",
                "offset"
            ]
        );
        let user = d.iter().find(|d| d.name == "fields.user").unwrap();
        let f = user.filters.as_ref().unwrap();
        assert_eq!(
            f.include,
            "/?q=app%3Afib%20fields.user%3A%22al%20ice%22&range=15m"
        );
        assert_eq!(
            f.exclude,
            "/?q=app%3Afib%20-fields.user%3A%22al%20ice%22&range=15m"
        );
        assert!(d.iter().find(|d| d.name == "ts").unwrap().filters.is_none());
        assert_eq!(
            context_href(&r),
            "/context?task=fib.1&ts=2026-11-23T10%3A00%3A00Z&source=fib.1%2Fstdout&offset=42#focus"
        );
    }

    #[test]
    fn context_links_keep_microseconds_regression_rounded_ts_found_no_record() {
        let meta = protocol::TaskMeta {
            host: "node-1".into(),
            app: "xss".into(),
            task: "xss.1".into(),
            instance: 0,
            ports: vec![],
        };
        let ts = "2026-11-23T10:00:00.123456Z".parse().unwrap();
        let r = LogRecord::new(ts, &meta, Stream::Stdout, "x");
        assert!(
            context_href(&r).contains("ts=2026-11-23T10%3A00%3A00.123456Z"),
            "{}",
            context_href(&r)
        );
    }

    #[test]
    fn levels_map_to_classes() {
        assert_eq!(level_class(Some(Level::Fatal)), "lvl-error");
        assert_eq!(level_class(Some(Level::Warn)), "lvl-warn");
        assert_eq!(level_class(Some(Level::Trace)), "lvl-debug");
        assert_eq!(level_class(None), "lvl-info");
    }

    fn params(pairs: &[(&str, &str)]) -> SearchParams {
        let get = |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string());
        SearchParams {
            sort: get("sort"),
            tz: get("tz"),
            cols: get("cols"),
            ..SearchParams::default()
        }
    }

    #[test]
    fn the_view_is_validated_and_kept_in_links() {
        let v = View::from_params(&params(&[
            ("sort", "oldest"),
            ("tz", "utc"),
            ("cols", "status, latency_ms,status,fields.user"),
        ]))
        .unwrap();
        assert_eq!(v.sort, SortBy::Oldest);
        assert_eq!(v.cols, ["status", "latency_ms", "fields.user"]);
        let range = TimeRange::from_params(None, None, None).unwrap();
        let ctx = Ctx {
            range: &range,
            view: &v,
        };
        assert_eq!(
            search_href("app:fib", ctx),
            "/?q=app%3Afib&range=15m&sort=oldest&tz=utc&cols=status%2Clatency_ms%2Cfields.user"
        );
        assert_eq!(v.toggle_col("status").cols, ["latency_ms", "fields.user"]);
        assert_eq!(v.toggle_col("path").cols.len(), 4);
        assert_eq!(SortBy::Slowest.api().as_deref(), Some("latency_desc"));
        assert!(View::default().params().is_empty());

        for bad in [
            ("sort", "sideways"),
            ("cols", "a b"),
            ("cols", "a,b,c,d,e,f,g,h,i"),
        ] {
            let err = View::from_params(&params(&[bad])).unwrap_err().to_string();
            assert!(err.contains(bad.0), "{err}");
        }
    }

    #[test]
    fn columns_read_record_fields_and_extra_fields() {
        let meta = protocol::TaskMeta {
            host: "node-1".into(),
            app: "fib".into(),
            task: "fib.1".into(),
            instance: 2,
            ports: vec![],
        };
        let mut r = LogRecord::new(chrono::Utc::now(), &meta, Stream::Access, "m");
        r.status = Some(503);
        r.latency_ms = Some(1.23456);
        r.fields.insert("user".into(), serde_json::json!("al"));
        r.fields.insert("n".into(), serde_json::json!(7));
        let got: Vec<String> = [
            "status",
            "latency_ms",
            "user",
            "fields.n",
            "missing",
            "host",
        ]
        .iter()
        .map(|c| column_value(&r, c))
        .collect();
        assert_eq!(got, ["503", "1.235", "al", "7", "", "node-1"]);
    }

    #[test]
    fn bars_stack_levels_bottom_up_and_fold_unknown_levels_into_none() {
        let by: std::collections::BTreeMap<String, u64> =
            [("error", 1), ("info", 2), ("", 0), ("loud", 1)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        let segs = stack(&by);
        let got: Vec<(&str, &str)> = segs.iter().map(|s| (s.class, s.height.as_str())).collect();
        assert_eq!(
            got,
            [
                ("lvl-none", "25.0"),
                ("lvl-info", "50.0"),
                ("lvl-error", "25.0")
            ]
        );
        assert!(stack(&Default::default()).is_empty());
    }
}
