//! `GET /trace/{id}`: one trace as a waterfall of hops with its app lines beneath.
//!
//! The hops are rows of a tree, each callee nested under its caller
//! ([`crate::hops`], the same order `sandtrail trace` prints); the bars keep one time
//! axis, so the waterfall reads as before, and the summary says whether the trace was
//! entered from outside the cluster.
//!
//! A hop is an access record written by the router. The router stamps `ts` when the call
//! *ends*, so a hop spans `[ts - latency_ms, ts]`; every hop is drawn on one time axis
//! from the earliest start to the latest end. App lines (any non-access record with the
//! trace id) follow, interleaved by time. The trace is fetched as a single search of up
//! to 1000 records: enough for any trace a person reads, and it keeps the page one
//! request; a larger trace is shown truncated, with a note.

use std::collections::BTreeSet;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use protocol::{Level, LogRecord, Stream, TraceId};
use serde::Deserialize;

use super::access::AccessView;
use super::search::{field_query, level_class};
use super::{render, TimeRange};
use crate::client::SearchQuery;
use crate::error::Result;
use crate::hops::{self, span_ms};
use crate::render::{format_latency, format_ts, href, short_task};
use crate::{AppState, Page};

/// Most records one trace page fetches.
const TRACE_LIMIT: u32 = 1000;
/// How far back a trace is looked for unless `start` says otherwise.
const DEFAULT_LOOKBACK: &str = "now-30d";
/// Narrowest bar drawn, in percent of the axis, so instant hops stay visible.
const MIN_BAR_PCT: f64 = 0.5;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct TraceParams {
    start: Option<String>,
    end: Option<String>,
    /// `utc`: times in UTC; otherwise the reader's zone (with JS).
    tz: Option<String>,
}

/// Where one hop's bar sits on the shared axis, in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bar {
    pub(crate) left: f64,
    pub(crate) width: f64,
}

pub(crate) struct Hop {
    access: AccessView,
    /// Nesting under its caller, 0 for a root (see [`crate::hops`]).
    depth: usize,
    indent_style: String,
    /// The call came from outside the cluster.
    external: bool,
    /// A root whose caller is named but not among the records.
    orphan: bool,
    span_id: String,
    parent_span_id: String,
    host_href: String,
    offset: String,
    bar_style: String,
    /// Idle time before this hop started (see [`gaps`]), empty for the first hop.
    gap: String,
    gap_style: Option<String>,
}

pub(crate) struct Line {
    time: String,
    /// RFC 3339 UTC, for the script that shows the reader's zone.
    ts: String,
    offset: String,
    host: String,
    app: String,
    instance: u32,
    task: String,
    task_short: String,
    level: &'static str,
    level_class: &'static str,
    msg: String,
}

#[derive(Template)]
#[template(path = "trace.html")]
struct TracePage {
    nav: &'static str,
    id: String,
    search_href: String,
    hops: Vec<Hop>,
    lines: Vec<Line>,
    duration: String,
    apps: String,
    hosts: String,
    /// Who made the first call: an outside client or a task, empty without hops.
    entry: String,
    total: u64,
    truncated: bool,
    utc: bool,
}

/// Bars for `spans` (start, end in ms) on one axis from the earliest start to the
/// latest end; every bar lies within 0..=100 percent.
pub(crate) fn waterfall(spans: &[(f64, f64)]) -> Vec<Bar> {
    let t0 = spans.iter().map(|s| s.0).fold(f64::INFINITY, f64::min);
    let t1 = spans.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
    let axis = (t1 - t0).max(1e-3);
    spans
        .iter()
        .map(|&(start, end)| {
            let left = clamp_pct((start - t0) / axis * 100.0, 0.0, 100.0);
            let width = clamp_pct((end - start) / axis * 100.0, MIN_BAR_PCT, 100.0);
            let left = left.min(100.0 - width);
            Bar { left, width }
        })
        .collect()
}

/// For each span (sorted by start), the idle time before it began: from the latest
/// earlier event (the end of an earlier hop that had finished by then, or else the start
/// of an earlier hop still running, i.e. its caller) to its own start. That is the time
/// the caller spent before making this call: queueing, its own work, or a slow network.
/// `None` for the first span. Returned as (from, length) in ms.
pub(crate) fn gaps(spans: &[(f64, f64)]) -> Vec<Option<(f64, f64)>> {
    spans
        .iter()
        .enumerate()
        .map(|(i, &(start, _))| {
            let prev = spans[..i]
                .iter()
                .map(|&(s, e)| if e <= start { e } else { s })
                .filter(|t| t.is_finite())
                .fold(f64::NEG_INFINITY, f64::max);
            prev.is_finite().then(|| (prev, (start - prev).max(0.0)))
        })
        .collect()
}

/// `x` within `lo..=hi`; NaN (from a nonsensical span) becomes `lo`.
fn clamp_pct(x: f64, lo: f64, hi: f64) -> f64 {
    if x.is_nan() {
        lo
    } else {
        x.clamp(lo, hi)
    }
}

pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(p): Query<TraceParams>,
) -> Result<Response> {
    state.metrics.hit(Page::Trace);
    let id = TraceId::parse(&id)?;
    let range = TimeRange::from_params(
        None,
        Some(p.start.as_deref().unwrap_or(DEFAULT_LOOKBACK)),
        p.end.as_deref(),
    )?;
    let q = id.search_term();
    let resp = state
        .client
        .search(&SearchQuery {
            q: q.clone(),
            start: range.start.clone(),
            end: range.end.clone(),
            limit: TRACE_LIMIT,
            cursor: None,
            sort: None,
        })
        .await
        .inspect_err(|e| state.metrics.upstream_error(e))?;

    let mut records = resp.hits;
    records.sort_by_key(|r| r.ts);
    let truncated = resp.total > records.len() as u64;

    let mut access: Vec<&LogRecord> = records
        .iter()
        .filter(|r| r.stream == Stream::Access)
        .collect();
    // Outer calls first (earlier start, then the longer call among equal starts): the
    // gaps are measured in time order, the rows then follow the call tree.
    access.sort_by(|a, b| {
        let (sa, ea) = span_ms(a);
        let (sb, eb) = span_ms(b);
        sa.total_cmp(&sb).then((eb - sb).total_cmp(&(ea - sa)))
    });
    let spans: Vec<(f64, f64)> = access.iter().map(|r| span_ms(r)).collect();
    let bars = waterfall(&spans);
    let hop_gaps = gaps(&spans);
    let tree = hops::tree(&access);
    let t0 = spans
        .iter()
        .map(|s| s.0)
        .chain(records.first().map(|r| span_ms(r).1))
        .fold(f64::INFINITY, f64::min);
    let t1 = spans
        .iter()
        .map(|s| s.1)
        .chain(records.last().map(|r| span_ms(r).1))
        .fold(f64::NEG_INFINITY, f64::max);
    let offset = |ms: f64| format!("+{}", format_latency((ms - t0).max(0.0)));
    let axis = (t1 - t0).max(1e-3);

    let entry = tree
        .first()
        .map(|root| {
            let r = access[root.index];
            let caller = AccessView::of(r).caller;
            if hops::is_external(r) {
                format!("from outside the cluster ({caller})")
            } else if root.orphan {
                format!("from {caller}, whose own call is not in this trace")
            } else {
                format!("from {caller}")
            }
        })
        .unwrap_or_default();
    let hops = tree
        .iter()
        .map(|t| {
            let (r, (start, _), bar, gap) = (
                access[t.index],
                spans[t.index],
                bars[t.index],
                hop_gaps[t.index],
            );
            Hop {
                access: AccessView::of(r),
                depth: t.depth,
                indent_style: format!("padding-left: {:.1}rem", 0.3 + 1.1 * t.depth as f64),
                external: t.parent.is_none() && hops::is_external(r),
                orphan: t.orphan,
                span_id: r.span_id.clone().unwrap_or_default(),
                parent_span_id: r.parent_span_id.clone().unwrap_or_default(),
                host_href: href("/", &[("q", &field_query("host", &r.host))]),
                offset: offset(start),
                bar_style: format!("left: {:.2}%; width: {:.2}%", bar.left, bar.width),
                gap: gap.map(|(_, len)| format_latency(len)).unwrap_or_default(),
                gap_style: gap.filter(|(_, len)| *len > 0.0).map(|(from, len)| {
                    let left = clamp_pct((from - t0) / axis * 100.0, 0.0, 100.0);
                    let width = clamp_pct(len / axis * 100.0, 0.0, 100.0 - left);
                    format!("left: {left:.2}%; width: {width:.2}%")
                }),
            }
        })
        .collect();

    let lines = records
        .iter()
        .filter(|r| r.stream != Stream::Access)
        .map(|r| Line {
            time: format_ts(r.ts),
            ts: crate::render::rfc3339_ms(r.ts),
            offset: offset(span_ms(r).1),
            host: r.host.clone(),
            app: r.app.clone(),
            instance: r.instance,
            task: r.task.clone(),
            task_short: short_task(&r.app, &r.task),
            level: r.level.map(Level::as_str).unwrap_or(""),
            level_class: level_class(r.level),
            msg: r.msg.clone(),
        })
        .collect();

    let apps: BTreeSet<&str> = records.iter().map(|r| r.app.as_str()).collect();
    let hosts: BTreeSet<&str> = records.iter().map(|r| r.host.as_str()).collect();
    let utc = super::wants_utc(p.tz.as_deref());
    let page = TracePage {
        nav: "",
        utc,
        search_href: super::with_utc(
            href(
                "/",
                &[("q", &q), ("start", &range.start), ("end", &range.end)],
            ),
            utc,
        ),
        duration: if records.is_empty() {
            String::new()
        } else {
            format_latency((t1 - t0).max(0.0))
        },
        apps: apps.into_iter().collect::<Vec<_>>().join(", "),
        hosts: hosts.into_iter().collect::<Vec<_>>().join(", "),
        entry,
        total: resp.total,
        truncated,
        hops,
        lines,
        id: id.into_string(),
    };
    Ok(render("trace", &page)?.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assert_in_axis(bars: &[Bar]) {
        for b in bars {
            assert!(b.left >= 0.0 && b.width >= 0.0, "{b:?}");
            assert!(b.left + b.width <= 100.0 + 1e-9, "{b:?}");
        }
    }

    #[test]
    fn nested_calls_sit_inside_their_parent() {
        // Outer 0..100 ms, inner 20..70 ms.
        let bars = waterfall(&[(0.0, 100.0), (20.0, 70.0)]);
        assert_eq!(
            bars[0],
            Bar {
                left: 0.0,
                width: 100.0
            }
        );
        assert!((bars[1].left - 20.0).abs() < 1e-9, "{:?}", bars[1]);
        assert!((bars[1].width - 50.0).abs() < 1e-9, "{:?}", bars[1]);
        assert_in_axis(&bars);
    }

    #[test]
    fn zero_latency_hops_stay_visible_and_inside() {
        let bars = waterfall(&[(0.0, 100.0), (100.0, 100.0)]);
        assert_eq!(bars[1].width, MIN_BAR_PCT);
        assert!((bars[1].left - (100.0 - MIN_BAR_PCT)).abs() < 1e-9);
        let odd = waterfall(&[(f64::NAN, 5.0), (10.0, 2.0)]);
        assert_in_axis(&odd);
        let single = waterfall(&[(5.0, 5.0)]);
        assert_eq!(single[0].left, 0.0);
        assert_in_axis(&single);
    }

    #[test]
    fn span_starts_latency_before_ts() {
        let meta = protocol::TaskMeta {
            host: "node-1".into(),
            app: "fib".into(),
            task: "fib.1".into(),
            instance: 0,
            ports: vec![],
        };
        let ts = "2026-11-23T10:00:01Z".parse().unwrap();
        let mut r = LogRecord::new(ts, &meta, Stream::Access, "GET /");
        r.latency_ms = Some(250.0);
        let (s, e) = span_ms(&r);
        assert!((e - s - 250.0).abs() < 1e-6);
        r.latency_ms = Some(-3.0);
        let (s, e) = span_ms(&r);
        assert_eq!(s, e);
        r.latency_ms = Some(f64::NAN);
        let (s, e) = span_ms(&r);
        assert_eq!(s, e);
    }

    #[test]
    fn gaps_measure_idle_time_since_the_previous_event() {
        // Outer 0..100; first child 10..40; second child starts 55 after the first ended;
        // a grandchild 12..30 starts 2 ms into the first child.
        let spans = [(0.0, 100.0), (10.0, 40.0), (12.0, 30.0), (55.0, 90.0)];
        let g = gaps(&spans);
        assert_eq!(g[0], None);
        assert_eq!(g[1], Some((0.0, 10.0)));
        assert_eq!(g[2], Some((10.0, 2.0)));
        // Latest earlier event before 55 is the first child's end at 40.
        assert_eq!(g[3], Some((40.0, 15.0)));
    }

    proptest! {
        #[test]
        fn gaps_are_never_negative(
            spans in proptest::collection::vec((0.0f64..1e6, 0.0f64..1e5), 1..20)
        ) {
            let mut spans: Vec<(f64, f64)> = spans.iter().map(|&(s, l)| (s, s + l)).collect();
            spans.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (from, len) in gaps(&spans).into_iter().flatten() {
                prop_assert!(len >= 0.0 && from.is_finite());
            }
        }

        #[test]
        fn bars_always_lie_within_the_axis(
            spans in proptest::collection::vec((0.0f64..1e7, 0.0f64..1e6), 1..30)
        ) {
            let spans: Vec<(f64, f64)> = spans.iter().map(|&(end, lat)| (end - lat, end)).collect();
            for b in waterfall(&spans) {
                prop_assert!(b.left >= 0.0 && b.left <= 100.0, "{:?}", b);
                prop_assert!(b.width >= 0.0 && b.left + b.width <= 100.0 + 1e-9, "{:?}", b);
            }
        }
    }
}
