//! `GET /download`: the search page's current result as NDJSON or CSV, the whole of
//! it up to [`MAX_DOWNLOAD`] records, streamed page by page from the indexer.
//!
//! The first page is fetched before answering, so a bad query or range gets its error
//! status and message; after that the body is streamed, one indexer page (1000
//! records) at a time, so memory stays at one page whatever the download's size. The
//! trade-off: an indexer failure mid-download can only abort the body, which the
//! browser reports as a failed download rather than a file silently cut short. "now"
//! as the end is pinned when the download starts, so the pages agree on the range.
//! Behind the same sign-in gate as every page; the indexer is called with the UI's own
//! credential.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use protocol::{LogRecord, SearchResponse};

use super::search::{column_value, SearchParams, View};
use super::TimeRange;
use crate::client::{Client, SearchQuery};
use crate::error::{Error, Result};
use crate::render::rfc3339_ms;
use crate::AppState;

/// Most records one download holds; stated on the page and in `x-sandtrail-download-cap`.
pub(crate) const MAX_DOWNLOAD: usize = 100_000;
/// Records asked of the indexer per page.
const PAGE: u32 = 1000;
/// The CSV's columns before the view's extra ones; `msg` comes last.
const CSV_HEAD: [&str; 7] = ["ts", "host", "app", "instance", "task", "stream", "level"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Ndjson,
    Csv,
}

impl Format {
    fn parse(s: Option<&str>) -> Result<Format> {
        match s.map(str::trim).unwrap_or("") {
            "" | "ndjson" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            other => Err(Error::BadParam {
                name: "format",
                value: other.to_string(),
                expected: "ndjson or csv",
            }),
        }
    }
}

/// First characters that make a spreadsheet read a cell as a formula (OWASP's CSV
/// injection list): a log line is written by whoever reached the app, so a message
/// such as `=HYPERLINK(...)` must open as text, never run.
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// One CSV field: a leading `'` when it would start a formula (the trade-off: a
/// negative number shows as `'-5` too, text rather than a number, which is the price
/// OWASP's rule pays for never guessing), then quoted when it holds a comma, a quote
/// or a line break (RFC 4180), quotes doubled.
pub(crate) fn csv_field(s: &str) -> String {
    let s = if s.starts_with(FORMULA_START) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv_line(fields: impl IntoIterator<Item = String>) -> String {
    let mut line = fields
        .into_iter()
        .map(|f| csv_field(&f))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

fn csv_row(r: &LogRecord, cols: &[String]) -> String {
    let head = CSV_HEAD.iter().map(|c| match *c {
        "ts" => r.ts.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        other => column_value(r, other),
    });
    let extra = cols.iter().map(|c| column_value(r, c));
    csv_line(head.chain(extra).chain(std::iter::once(r.msg.clone())))
}

fn encode(format: Format, hits: &[LogRecord], cols: &[String]) -> Bytes {
    match format {
        Format::Ndjson => Bytes::from(protocol::encode_ndjson(hits)),
        Format::Csv => Bytes::from(hits.iter().map(|r| csv_row(r, cols)).collect::<String>()),
    }
}

/// Where a download is: the next page to ask for, or one already fetched.
struct Pager {
    client: Client,
    req: SearchQuery,
    pending: Option<SearchResponse>,
    sent: usize,
    done: bool,
    format: Format,
    cols: Vec<String>,
}

impl Pager {
    /// The next chunk of the body, `None` at the end.
    async fn next(mut self) -> Option<(std::io::Result<Bytes>, Pager)> {
        if self.done {
            return None;
        }
        let resp = match self.pending.take() {
            Some(r) => r,
            None => match self.client.search(&self.req).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(sent = self.sent, error = %e, "download aborted");
                    self.done = true;
                    return Some((Err(std::io::Error::other(e.to_string())), self));
                }
            },
        };
        let room = MAX_DOWNLOAD - self.sent;
        let hits = &resp.hits[..resp.hits.len().min(room)];
        self.sent += hits.len();
        let chunk = encode(self.format, hits, &self.cols);
        match resp.next.filter(|n| !n.is_empty()) {
            Some(next) if self.sent < MAX_DOWNLOAD && !hits.is_empty() => {
                self.req.cursor = Some(next)
            }
            _ => self.done = true,
        }
        Some((Ok(chunk), self))
    }
}

pub(crate) async fn download(
    State(state): State<Arc<AppState>>,
    Query(p): Query<SearchParams>,
) -> Result<Response> {
    let format = Format::parse(p.format.as_deref())?;
    let view = View::from_params(&p)?;
    let range = TimeRange::from_params(p.range.as_deref(), p.start.as_deref(), p.end.as_deref())?;
    let end = match range.end.trim() {
        "" | "now" => rfc3339_ms(chrono::Utc::now()),
        e => e.to_string(),
    };
    let req = SearchQuery {
        q: p.q.clone().unwrap_or_default().trim().to_string(),
        start: range.start.clone(),
        end,
        limit: PAGE,
        cursor: None,
        sort: view.sort_api(),
    };
    let first = state
        .client
        .search(&req)
        .await
        .inspect_err(|e| state.metrics.upstream_error(e))?;
    let cols = view.columns().to_vec();
    let head = match format {
        Format::Csv => csv_line(
            CSV_HEAD
                .iter()
                .map(|c| c.to_string())
                .chain(cols.iter().cloned())
                .chain(std::iter::once("msg".to_string())),
        ),
        Format::Ndjson => String::new(),
    };
    let pager = Pager {
        client: state.client.clone(),
        req,
        pending: Some(first),
        sent: 0,
        done: false,
        format,
        cols,
    };
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) })
        .chain(futures::stream::unfold(pager, Pager::next));
    let (content_type, file) = match format {
        Format::Ndjson => ("application/x-ndjson", "sandtrail-search.ndjson"),
        Format::Csv => ("text/csv; charset=utf-8", "sandtrail-search.csv"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
            (
                header::HeaderName::from_static("x-sandtrail-download-cap"),
                MAX_DOWNLOAD.to_string(),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field("plain text"), "plain text");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
        assert_eq!(csv_field(""), "");
        assert_eq!(
            csv_field("a=b"),
            "a=b",
            "only a leading sign starts a formula"
        );
    }

    #[test]
    fn csv_cells_that_would_run_as_formulas_open_as_text() {
        assert_eq!(csv_field("=1+1"), "'=1+1");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("-2"), "'-2");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("\tx"), "'\tx");
        assert_eq!(csv_field("\r=1"), "\"'\r=1\"");
        // The quote goes inside the field's own quotes, where a spreadsheet reads it.
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(csv_line(["a".into(), "b,c".into()]), "a,\"b,c\"\r\n");
    }

    #[test]
    fn formats_are_named_or_refused() {
        assert_eq!(Format::parse(None).unwrap(), Format::Ndjson);
        assert_eq!(Format::parse(Some("csv")).unwrap(), Format::Csv);
        let e = Format::parse(Some("xlsx")).unwrap_err().to_string();
        assert!(e.contains("xlsx") && e.contains("csv"), "{e}");
    }
}
