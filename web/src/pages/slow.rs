//! `GET /slow`: the recent slow calls. The slowest access records in the range (the
//! indexer sorts by latency, so this is the true top, not the slowest of a recent page)
//! and latency percentiles per host, app or task, each call linking to its trace.
//!
//! Both come from the indexer in one round of concurrent requests. The percentiles are
//! extra: if the indexer cannot compute them the list of calls still shows, with a
//! notice, so a slow-call hunt never waits on the statistics.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use protocol::LogRecord;
use serde::Deserialize;

use super::access::{trace_href, AccessView};
use super::search::field_query;
use super::{render, TimeRange, PRESETS};
use crate::client::SearchQuery;
use crate::error::{Error, Result};
use crate::render::{format_latency, format_ts, href};
use crate::{AppState, Page};

/// Slow calls listed.
const SLOW_LIMIT: u32 = 50;
/// What the latency table can be grouped by.
const GROUPINGS: [&str; 3] = ["host", "app", "task"];

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SlowParams {
    q: Option<String>,
    range: Option<String>,
    start: Option<String>,
    end: Option<String>,
    by: Option<String>,
}

pub(crate) struct Link {
    label: &'static str,
    href: String,
    active: bool,
}

pub(crate) struct Call {
    time: String,
    access: AccessView,
    bar: String,
    trace: Option<String>,
}

pub(crate) struct Group {
    key: String,
    href: String,
    count: u64,
    avg: String,
    p50: String,
    p90: String,
    p99: String,
    max: String,
    bar: String,
}

#[derive(Template)]
#[template(path = "slow.html")]
struct SlowPage {
    nav: &'static str,
    q: String,
    preset: &'static str,
    start: String,
    end: String,
    by: &'static str,
    presets: Vec<Link>,
    groupings: Vec<Link>,
    calls: Vec<Call>,
    total: u64,
    groups: Vec<Group>,
    groups_error: Option<String>,
    search_href: String,
}

/// The query that selects access records, narrowed by what the reader typed.
fn access_query(q: &str) -> String {
    if q.is_empty() {
        "stream:access".to_string()
    } else {
        format!("stream:access AND ({q})")
    }
}

fn latency_cell(v: Option<f64>) -> String {
    v.map(format_latency).unwrap_or_default()
}

fn call(r: &LogRecord, max: f64) -> Call {
    let latency = r.latency_ms.unwrap_or(0.0);
    Call {
        time: format_ts(r.ts),
        access: AccessView::of(r),
        bar: format!("{:.1}", bar_pct(latency, max)),
        trace: trace_href(r),
    }
}

/// `v` as a share of `max` in percent, at least 1 so a bar is always visible.
fn bar_pct(v: f64, max: f64) -> f64 {
    if !(v.is_finite() && max.is_finite()) || max <= 0.0 || v <= 0.0 {
        return 1.0;
    }
    (v / max * 100.0).clamp(1.0, 100.0)
}

pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    Query(p): Query<SlowParams>,
) -> Result<Response> {
    state.metrics.hit(Page::Slow);
    let q = p.q.unwrap_or_default().trim().to_string();
    let range = TimeRange::from_params(p.range.as_deref(), p.start.as_deref(), p.end.as_deref())?;
    let by = match p.by.as_deref().map(str::trim).filter(|b| !b.is_empty()) {
        None => "host",
        Some(b) => GROUPINGS
            .iter()
            .copied()
            .find(|g| *g == b)
            .ok_or_else(|| Error::BadParam {
                name: "by",
                value: b.to_string(),
                expected: "one of host, app, task",
            })?,
    };
    let aq = access_query(&q);
    let client = &state.client;
    let slowest = SearchQuery {
        q: aq.clone(),
        start: range.start.clone(),
        end: range.end.clone(),
        limit: SLOW_LIMIT,
        cursor: None,
        sort: Some("latency_desc".to_string()),
    };
    let (calls, latency) = tokio::join!(
        client.search(&slowest),
        client.latency(&aq, &range.start, &range.end, by),
    );
    let calls = calls.inspect_err(|e| state.metrics.upstream_error(e))?;
    let (groups, groups_error) = match latency {
        Ok(l) => {
            let max = l.groups.iter().filter_map(|g| g.p99).fold(0.0f64, f64::max);
            let groups = l
                .groups
                .into_iter()
                .map(|g| {
                    let narrowed = if q.is_empty() {
                        field_query(by, &g.key)
                    } else {
                        format!("{q} {}", field_query(by, &g.key))
                    };
                    let mut params = vec![("q", narrowed.as_str()), ("by", by)];
                    params.extend(range.params());
                    Group {
                        href: href("/slow", &params),
                        bar: format!("{:.1}", bar_pct(g.p99.unwrap_or(0.0), max)),
                        count: g.count,
                        avg: latency_cell(g.avg),
                        p50: latency_cell(g.p50),
                        p90: latency_cell(g.p90),
                        p99: latency_cell(g.p99),
                        max: latency_cell(g.max),
                        key: g.key,
                    }
                })
                .collect();
            (groups, None)
        }
        Err(e) => {
            state.metrics.upstream_error(&e);
            tracing::warn!(error = %e, "latency percentiles unavailable");
            (Vec::new(), Some(e.to_string()))
        }
    };
    let max = calls
        .hits
        .iter()
        .filter_map(|r| r.latency_ms)
        .fold(0.0f64, f64::max);
    let link = |extra: Vec<(&'static str, &str)>| {
        let mut params = vec![("q", q.as_str())];
        params.extend(extra);
        href("/slow", &params)
    };
    let page = SlowPage {
        nav: "slow",
        presets: PRESETS
            .iter()
            .map(|(label, _)| Link {
                label,
                href: link(vec![("range", label), ("by", by)]),
                active: range.preset == Some(*label),
            })
            .collect(),
        groupings: GROUPINGS
            .iter()
            .map(|g| {
                let mut params = vec![("by", *g)];
                params.extend(range.params());
                Link {
                    label: g,
                    href: link(params),
                    active: *g == by,
                }
            })
            .collect(),
        calls: calls.hits.iter().map(|r| call(r, max)).collect(),
        total: calls.total,
        groups,
        groups_error,
        search_href: {
            let mut params = vec![("q", aq.as_str())];
            params.extend(range.params());
            href("/", &params)
        },
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
        by,
        q,
    };
    Ok(render("slow", &page)?.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_query_keeps_the_readers_query_grouped() {
        assert_eq!(access_query(""), "stream:access");
        assert_eq!(
            access_query("app:fib OR app:x"),
            "stream:access AND (app:fib OR app:x)"
        );
    }

    #[test]
    fn bars_are_visible_and_bounded() {
        assert_eq!(bar_pct(50.0, 100.0), 50.0);
        assert_eq!(bar_pct(0.0, 100.0), 1.0);
        assert_eq!(bar_pct(5.0, 0.0), 1.0);
        assert_eq!(bar_pct(f64::NAN, 10.0), 1.0);
        assert_eq!(bar_pct(200.0, 100.0), 100.0);
    }
}
