//! `GET /context`: the lines of one task before and after one record, the "what else
//! was this process saying" view behind every row's "context" link.
//!
//! The record is named by its identity (task, source, offset) plus its time, and the
//! indexer answers with the task's neighbouring lines regardless of the query that found
//! the record: context is about the process, not the search. The page asks for `n` lines
//! on each side and offers links to widen it; it does no paging of its own, which keeps
//! it one request at the cost of a hard cap on how far it reaches.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use protocol::{Level, LogRecord};
use serde::Deserialize;

use super::access::trace_href;
use super::render;
use super::search::{context_href_n, field_query, level_class, CONTEXT_LINES};
use crate::client::ContextQuery;
use crate::error::{Error, Result};
use crate::render::{format_ts, href, short_task};
use crate::{AppState, Page};

/// Most lines a reader can ask for on each side.
const MAX_CONTEXT: u32 = 500;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ContextParams {
    task: Option<String>,
    ts: Option<String>,
    source: Option<String>,
    offset: Option<String>,
    n: Option<String>,
    /// `utc`: times in UTC; otherwise the reader's zone (with JS).
    tz: Option<String>,
}

pub(crate) struct CtxLine {
    time: String,
    /// RFC 3339 UTC, for the script that shows the reader's zone.
    ts: String,
    host: String,
    instance: u32,
    stream: &'static str,
    level: &'static str,
    level_class: &'static str,
    msg: String,
    trace: Option<String>,
    focus: bool,
    href: String,
}

#[derive(Template)]
#[template(path = "context.html")]
struct ContextPage {
    nav: &'static str,
    task: String,
    task_short: String,
    app: String,
    ts: String,
    found: bool,
    lines: Vec<CtxLine>,
    n: u32,
    wider: String,
    task_href: String,
    utc: bool,
}

pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    Query(p): Query<ContextParams>,
) -> Result<Response> {
    state.metrics.hit(Page::Context);
    let task = p.task.unwrap_or_default().trim().to_string();
    if task.is_empty() {
        return Err(Error::BadParam {
            name: "task",
            value: task,
            expected: "the task id of the record to show context for",
        });
    }
    let ts = p.ts.unwrap_or_default().trim().to_string();
    if chrono::DateTime::parse_from_rfc3339(&ts).is_err() {
        return Err(Error::BadParam {
            name: "ts",
            value: ts,
            expected: "an RFC 3339 time",
        });
    }
    let offset = match p.offset.as_deref().map(str::trim).filter(|o| !o.is_empty()) {
        None => 0,
        Some(o) => o.parse::<u64>().map_err(|_| Error::BadParam {
            name: "offset",
            value: o.to_string(),
            expected: "a byte offset (a non-negative integer)",
        })?,
    };
    let n = match p.n.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        None => CONTEXT_LINES,
        Some(n) => match n.parse::<u32>() {
            Ok(v) if (1..=MAX_CONTEXT).contains(&v) => v,
            _ => {
                return Err(Error::BadParam {
                    name: "n",
                    value: n.to_string(),
                    expected: "a number of lines from 1 to 500",
                })
            }
        },
    };
    let source = p.source.unwrap_or_default();
    let utc = super::wants_utc(p.tz.as_deref());
    let req = ContextQuery {
        task: task.clone(),
        ts: ts.clone(),
        source: source.clone(),
        offset,
        n,
    };
    let resp = state
        .client
        .context(&req)
        .await
        .inspect_err(|e| state.metrics.upstream_error(e))?;

    let found = resp.record.is_some();
    let app = resp
        .record
        .iter()
        .chain(&resp.before)
        .chain(&resp.after)
        .map(|r| r.app.clone())
        .next()
        .unwrap_or_default();
    let line = |r: &LogRecord, focus: bool| CtxLine {
        time: format_ts(r.ts),
        ts: crate::render::rfc3339_ms(r.ts),
        host: r.host.clone(),
        instance: r.instance,
        stream: r.stream.as_str(),
        level: r.level.map(Level::as_str).unwrap_or(""),
        level_class: level_class(r.level),
        msg: r.msg.clone(),
        trace: trace_href(r).map(|t| super::with_utc(t, utc)),
        focus,
        href: super::with_utc(context_href_n(r, n), utc),
    };
    let mut lines: Vec<CtxLine> = resp.before.iter().map(|r| line(r, false)).collect();
    lines.extend(resp.record.iter().map(|r| line(r, true)));
    lines.extend(resp.after.iter().map(|r| line(r, false)));

    let wider_n = (n * 4).min(MAX_CONTEXT).to_string();
    let offset_s = offset.to_string();
    let page = ContextPage {
        nav: "",
        task_short: short_task(&app, &task),
        task_href: super::with_utc(
            href("/", &[("q", &field_query("task", &task)), ("range", "24h")]),
            utc,
        ),
        utc,
        wider: super::with_utc(
            href(
                "/context",
                &[
                    ("task", &task),
                    ("ts", &ts),
                    ("source", &source),
                    ("offset", &offset_s),
                    ("n", &wider_n),
                ],
            ) + "#focus",
            utc,
        ),
        task,
        app,
        ts,
        found,
        lines,
        n,
    };
    Ok(render("context", &page)?.into_response())
}
