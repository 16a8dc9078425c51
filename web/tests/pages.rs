//! The web UI against a fake indexer and a fake scheduler: small axum routers on
//! 127.0.0.1:0 that answer the other side of the HTTP contract with canned protocol
//! JSON. They record the query parameters they receive, so the tests check what the
//! UI asks for as well as what it renders.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use protocol::{
    AgentInfo, HistogramBucket, HistogramResponse, Level, LogRecord, SearchResponse, Stream,
    TaskMeta,
};
use serde_json::json;
use web::{Web, WebConfig};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

type Seen = Arc<Mutex<Vec<HashMap<String, String>>>>;

fn ts(s: &str) -> DateTime<Utc> {
    s.parse().expect("valid test timestamp")
}

fn record(host: &str, app: &str, instance: u32, msg: &str, at: &str) -> LogRecord {
    let meta = TaskMeta {
        host: host.into(),
        app: app.into(),
        task: format!("{app}.0f3c1a2b-aaaa-bbbb"),
        instance,
        ports: vec![],
    };
    LogRecord::new(ts(at), &meta, Stream::Stdout, msg)
}

fn access(host: &str, app: &str, peer: (&str, &str), at: &str, latency: f64) -> LogRecord {
    let mut r = record(host, app, 0, "GET /fib/10 200", at);
    r.stream = Stream::Access;
    r.peer_app = Some(peer.0.into());
    r.peer_host = Some(peer.1.into());
    r.method = Some("GET".into());
    r.path = Some("/fib/10".into());
    r.status = Some(200);
    r.latency_ms = Some(latency);
    r.trace_id = Some(TRACE_ID.into());
    r
}

async fn fake_search(
    State(seen): State<Seen>,
    headers: axum::http::HeaderMap,
    Query(mut p): Query<HashMap<String, String>>,
) -> Response {
    if let Some(token) = headers.get(protocol::TOKEN_HEADER) {
        p.insert("_token".into(), token.to_str().unwrap_or("").into());
    }
    seen.lock().unwrap().push(p.clone());
    let q = p.get("q").cloned().unwrap_or_default();
    if q.contains("bad(") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "syntax error at position 3: expected a term after ( in <bad("})),
        )
            .into_response();
    }
    if q == "endless" {
        // Always another page: only the download's cap ends it.
        let limit: usize = p.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
        let page: u64 = p
            .get("cursor")
            .and_then(|c| c.strip_prefix('p'))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let hits = (0..limit)
            .map(|_| record("node-1", "endless", 0, "again", "2026-11-23T10:00:00Z"))
            .collect();
        return Json(SearchResponse {
            total: u64::MAX,
            hits,
            next: Some(format!("p{}", page + 1)),
        })
        .into_response();
    }
    if q == "csvformula" {
        let mut r = record(
            "node-1",
            "fib",
            2,
            "=HYPERLINK(\"http://evil.example\",\"click\")",
            "2026-11-23T10:00:00.5Z",
        );
        r.fields.insert("user".into(), json!("@SUM(1+1)"));
        r.fields.insert("delta".into(), json!("-3"));
        return Json(SearchResponse {
            total: 1,
            hits: vec![r],
            next: None,
        })
        .into_response();
    }
    if q == "csvtricky" {
        let mut r = record(
            "node-1",
            "fib",
            2,
            "said \"hi, there\"\nsecond line",
            "2026-11-23T10:00:00.5Z",
        );
        r.level = Some(Level::Warn);
        r.fields.insert("user".into(), json!("al,ice"));
        return Json(SearchResponse {
            total: 1,
            hits: vec![r],
            next: None,
        })
        .into_response();
    }
    if p.get("sort").map(String::as_str) == Some("latency_desc") {
        let mut slow = access(
            "node-2",
            "fib",
            ("gateway", "node-1"),
            "2026-11-23T10:00:00.100Z",
            250.0,
        );
        slow.status = Some(503);
        let fast = access(
            "node-3",
            "fibcalc",
            ("fib", "node-2"),
            "2026-11-23T10:00:00.090Z",
            12.5,
        );
        return Json(SearchResponse {
            total: 77,
            hits: vec![slow, fast],
            next: None,
        })
        .into_response();
    }
    if q.starts_with("trace_id:") {
        // Newest first, as the indexer answers; the page must sort them.
        let mut line = record(
            "node-3",
            "fibcalc",
            1,
            "computing fib(10) for trace",
            "2026-11-23T10:00:00.080Z",
        );
        line.trace_id = Some(TRACE_ID.into());
        line.level = Some(Level::Info);
        let hits = vec![
            access(
                "node-2",
                "fib",
                ("gateway", "node-1"),
                "2026-11-23T10:00:00.100Z",
                100.0,
            ),
            line,
            access(
                "node-3",
                "fibcalc",
                ("fib", "node-2"),
                "2026-11-23T10:00:00.090Z",
                60.0,
            ),
        ];
        return Json(SearchResponse {
            total: 3,
            hits,
            next: None,
        })
        .into_response();
    }
    if q == "dotted" {
        let mut line = record("node-1", "fib", 0, "a request", "2026-11-23T10:00:00Z");
        line.trace_id = Some("req-42_a.b".into());
        return Json(SearchResponse {
            total: 1,
            hits: vec![line],
            next: None,
        })
        .into_response();
    }
    if p.get("cursor").map(String::as_str) == Some("c1") {
        return Json(SearchResponse {
            total: 3,
            hits: vec![record(
                "node-1",
                "fib",
                0,
                "an older page line",
                "2026-11-23T09:00:00Z",
            )],
            next: None,
        })
        .into_response();
    }
    let mut fib = record(
        "node-1",
        "fib",
        2,
        "<script>alert(1)</script> computing fib(10) &amp; done",
        "2026-11-23T10:00:00.123Z",
    );
    fib.level = Some(Level::Error);
    fib.trace_id = Some(TRACE_ID.into());
    let mut hits = vec![fib];
    if !q.contains("app:fib") {
        hits.push(record(
            "node-2",
            "frontend",
            0,
            "frontend line",
            "2026-11-23T09:59:59Z",
        ));
    }
    Json(SearchResponse {
        total: 42,
        hits,
        next: Some("c1".into()),
    })
    .into_response()
}

async fn fake_histogram() -> Json<HistogramResponse> {
    Json(HistogramResponse {
        interval_ms: 60_000,
        buckets: vec![
            HistogramBucket {
                ts: ts("2026-11-23T09:58:00Z"),
                count: 0,
                by: Default::default(),
            },
            HistogramBucket {
                ts: ts("2026-11-23T09:59:00Z"),
                count: 5,
                by: Default::default(),
            },
            HistogramBucket {
                ts: ts("2026-11-23T10:00:00Z"),
                count: 37,
                by: Default::default(),
            },
        ],
    })
}

async fn fake_tail(
    headers: axum::http::HeaderMap,
    Query(p): Query<HashMap<String, String>>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let q = p.get("q").cloned().unwrap_or_default();
    // A resumed stream says after which id, as the indexer replays from it.
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|id| format!(" after [{id}]"))
        .unwrap_or_default();
    let rec = record(
        "node-1",
        "fib",
        1,
        &format!("tail line for [{q}]{after}"),
        "2026-11-23T10:00:00Z",
    );
    let data = serde_json::to_string(&rec).unwrap();
    let events = futures::stream::iter(vec![
        Ok(Event::default().id("ep-42").data(data)),
        Ok(Event::default().event("dropped").data(r#"{"dropped":7}"#)),
    ])
    // The indexer's stream stays open: the proxy must forward without waiting for an end.
    .chain(futures::stream::pending());
    Sse::new(events)
}

/// Records the parameters of a call to one of the analytics endpoints, tagged with its
/// path so [`Harness::last_search`] can tell them from searches.
fn seen_at(seen: &Seen, path: &str, mut p: HashMap<String, String>) {
    p.insert("_path".into(), path.into());
    seen.lock().unwrap().push(p);
}

async fn fake_fields(
    State(seen): State<Seen>,
    Query(p): Query<HashMap<String, String>>,
) -> Json<serde_json::Value> {
    seen_at(&seen, "fields", p);
    Json(json!({"fields": [
        {"field": "host", "values": [{"value": "node-1", "count": 12}, {"value": "node-2", "count": 3}]},
        {"field": "level", "values": [{"value": "error", "count": 2}]},
        {"field": "fields.user", "values": [{"value": "<b>bob</b>", "count": 4}, {"value": 7, "count": 1}]},
        {"field": "fields.empty", "values": []}
    ]}))
}

async fn fake_context(
    State(seen): State<Seen>,
    Query(p): Query<HashMap<String, String>>,
) -> Json<serde_json::Value> {
    seen_at(&seen, "context", p);
    let line = |msg: &str, at: &str, offset: u64| {
        let mut r = record("node-1", "fib", 2, msg, at);
        r.source = "fib.0f3c1a2b-aaaa-bbbb/stdout".into();
        r.offset = offset;
        r
    };
    Json(json!({
        "before": [line("before one", "2026-11-23T10:00:00.100Z", 10), line("before two <i>", "2026-11-23T10:00:00.110Z", 20)],
        "record": line("the record itself", "2026-11-23T10:00:00.123Z", 30),
        "after": [line("after one", "2026-11-23T10:00:00.200Z", 40)],
    }))
}

async fn fake_latency(
    State(seen): State<Seen>,
    Query(p): Query<HashMap<String, String>>,
) -> Json<serde_json::Value> {
    seen_at(&seen, "latency", p);
    Json(json!({"groups": [
        {"key": "node-2", "count": 40, "avg": 20.5, "p50": 12.0, "p90": 80.0, "p99": 200.0, "max": 250.0},
        {"key": "node-3", "count": 10, "avg": 5.0, "p50": 4.0, "p90": 9.0, "p99": 100.0, "max": null}
    ]}))
}

fn fake_indexer(seen: Seen) -> Router {
    fake_indexer_without_analytics(seen.clone()).merge(
        Router::new()
            .route("/api/v1/fields", get(fake_fields))
            .route("/api/v1/context", get(fake_context))
            .route("/api/v1/latency", get(fake_latency))
            .with_state(seen),
    )
}

/// The indexer as it was before `/fields`, `/context` and `/latency` existed.
fn fake_indexer_without_analytics(seen: Seen) -> Router {
    Router::new()
        .route("/api/v1/search", get(fake_search))
        .route("/api/v1/histogram", get(fake_histogram))
        .route("/api/v1/tail", get(fake_tail))
        .with_state(seen)
}

fn fake_scheduler() -> Router {
    let apps = json!({"apps": [
        {"id": "/fib", "instances": 3, "tasksRunning": 3, "cpus": 0.5, "mem": 64, "cmd": "sandtrail demo-fib", "labels": {},
         "healthChecks": [{"protocol": "HTTP", "path": "/health"}]},
        {"id": "/frontend", "instances": 1, "tasksRunning": 0, "cpus": null}
    ]});
    let tasks = json!({"tasks": [
        {"id": "fib.aaaa1111", "appId": "/fib", "host": "node-1", "ports": [31000], "state": "TASK_RUNNING", "startedAt": "2026-11-23T09:00:00.000Z",
         "restarts": 0, "healthCheckResults": [{"alive": true, "consecutiveFailures": 0}]},
        {"id": "fib.bbbb2222", "appId": "/fib", "host": "node-2", "ports": [31001], "state": "TASK_RUNNING", "startedAt": "2026-11-23T09:00:01.000Z",
         "restarts": 4, "healthCheckResults": [{"alive": false, "consecutiveFailures": 2, "lastFailureCause": "<b>HTTP 503</b>"}]},
        {"id": "fib.cccc3333", "appId": "/fib", "host": "node-2", "ports": [31002], "state": "TASK_STAGING", "restarts": 1}
    ]});
    let now = Utc::now();
    // As the scheduler lists them: the registration plus `used`, what the tasks placed
    // there take (node-1 runs one fib task of 0.5 cpus and 64 MiB, node-2 two), and
    // `shipper`, the back-pressure of the agent's last heartbeat: node-1's indexer
    // cannot keep up (budget overrun, bytes dropped, spool full, reading paused),
    // node-2's can. node-3 runs an agent whose figures are garbage, and an attribute
    // with markup.
    let mib = 1024 * 1024;
    let agents: Vec<serde_json::Value> = [
        (
            "node-1",
            1.0,
            "a",
            json!({"log_bytes_on_disk": 96 * mib, "log_budget_bytes_total": 64 * mib,
                   "log_bytes_dropped": 123_456, "spool_bytes": 1024 * mib,
                   "spool_max_bytes": 1024 * mib, "reading_paused": true, "lag_bytes": 300 * mib}),
        ),
        (
            "node-2",
            2.0,
            "a",
            json!({"log_bytes_on_disk": 16 * mib, "log_budget_bytes_total": 64 * mib,
                   "spool_max_bytes": 1024 * mib}),
        ),
        (
            "node-3",
            0.0,
            "<b>c</b>",
            json!("<script>alert(1)</script>"),
        ),
    ]
    .into_iter()
    .map(|(name, fib_tasks, rack, shipper)| {
        let mut v = serde_json::to_value(AgentInfo {
            name: name.to_string(),
            address: format!("10.0.0.{}", &name[5..]),
            router_url: String::new(),
            resources: [("cpus".to_string(), 4.0), ("mem".to_string(), 8192.0)].into(),
            attributes: [("rack".to_string(), rack.to_string())].into(),
            last_heartbeat: Some(now),
            state: "active".into(),
            containerizers: Vec::new(),
        })
        .unwrap();
        v["used"] =
            json!({"cpus": 0.5 * fib_tasks, "mem": 64.0 * fib_tasks, "disk": 0.0, "ports": []});
        v["shipper"] = shipper;
        v
    })
    .collect();
    // Changes are refused as a scheduler refuses a read token (the UI's own, in a
    // standalone `web` given no deploy token).
    let refuse = || async {
        (
            StatusCode::FORBIDDEN,
            Json(json!({"message": "forbidden: this needs the deploy role; the token has read"})),
        )
    };
    Router::new()
        .route("/v2/apps", get(move || async move { Json(apps) }))
        .route("/v2/apps/{id}", axum::routing::put(refuse))
        .route("/v1/agents/{name}/drain", axum::routing::post(refuse))
        .route("/v1/tasks", get(move || async move { Json(tasks) }))
        .route("/v1/agents", get(move || async move { Json(agents) }))
}

async fn serve(router: Router) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        axum::serve(listener, router).await.ok();
    });
    Ok(format!("http://{addr}"))
}

struct Harness {
    web: String,
    seen: Seen,
    http: reqwest::Client,
}

impl Harness {
    async fn start() -> Result<Harness> {
        let seen: Seen = Arc::default();
        let indexer = serve(fake_indexer(seen.clone())).await?;
        let scheduler = serve(fake_scheduler()).await?;
        let web = serve(web::router(WebConfig {
            indexer_url: indexer,
            scheduler_url: format!("{scheduler}/"),
        }))
        .await?;
        Ok(Harness {
            web,
            seen,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        })
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, String)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.web))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = StatusCode::from_u16(resp.status().as_u16())?;
        Ok((status, resp.text().await?))
    }

    fn last_search(&self) -> HashMap<String, String> {
        self.last_at("search")
    }

    /// The parameters of the last call to `/api/v1/{path}`.
    fn last_at(&self, path: &str) -> HashMap<String, String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|p| p.get("_path").map(String::as_str).unwrap_or("search") == path)
            .cloned()
            .unwrap_or_else(|| panic!("no call to /api/v1/{path} reached the indexer"))
    }
}

#[tokio::test]
async fn search_page_shows_rows_escaped_with_histogram_and_cursor() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/").await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    let p = h.last_search();
    assert_eq!(p.get("start").map(String::as_str), Some("now-15m"));
    assert_eq!(p.get("end").map(String::as_str), Some("now"));
    assert_eq!(p.get("limit").map(String::as_str), Some("100"));

    for want in [
        "node-1",
        "node-2",
        "frontend line",
        "2026-11-23 10:00:00.123",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "&amp;amp; done",
        "<strong>2</strong> of <strong>42</strong>",
        "cursor=c1",
        &format!("href=\"/trace/{TRACE_ID}\""),
        "class=\"lvl lvl-error\"",
        // Histogram bars zoom into their bucket.
        "start=2026-11-23T10%3A00%3A00.000Z&#38;end=2026-11-23T10%3A01%3A00.000Z",
        "height: 100.0%",
        // App picker options come from the scheduler.
        "<option value=\"frontend\"",
        // The navigation.
        "href=\"/apps\"",
        "href=\"/hosts\"",
    ] {
        assert!(html.contains(want), "missing {want:?} in:\n{html}");
    }
    assert!(!html.contains("<script>alert"), "{html}");

    let (_, older) = h.get("/?q=&range=15m&cursor=c1").await?;
    assert!(older.contains("an older page line"), "{older}");
    assert_eq!(
        h.last_search().get("cursor").map(String::as_str),
        Some("c1")
    );
    Ok(())
}

#[tokio::test]
async fn app_query_is_passed_through_and_free_text_highlighted() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/?q=app:fib%20alert&range=1h").await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    let p = h.last_search();
    assert_eq!(p.get("q").map(String::as_str), Some("app:fib alert"));
    assert_eq!(p.get("start").map(String::as_str), Some("now-1h"));
    assert!(!html.contains("frontend line"), "{html}");
    assert!(
        html.contains("&lt;script&gt;<mark>alert</mark>(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(html.contains("<option value=\"fib\" selected>"), "{html}");
    Ok(())
}

#[tokio::test]
async fn app_picker_folds_the_app_into_the_query() -> Result<()> {
    let h = Harness::start().await?;
    let resp = h
        .http
        .get(format!(
            "{}/?q=app:old%20level:error&app=fib&range=5m",
            h.web
        ))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 303);
    let location = resp.headers()["location"].to_str()?;
    assert_eq!(location, "/?q=app%3Afib%20level%3Aerror&range=5m");
    Ok(())
}

#[tokio::test]
async fn indexer_400_shows_its_message_on_the_search_page() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/?q=bad(").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        html.contains("syntax error at position 3: expected a term after ( in &#60;bad("),
        "{html}"
    );
    // The form stays, holding the query for fixing.
    assert!(html.contains("value=\"bad(\""), "{html}");
    Ok(())
}

#[tokio::test]
async fn unknown_range_preset_is_a_400_with_the_value_named() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/?range=3w").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("invalid range"), "{html}");
    Ok(())
}

#[tokio::test]
async fn trace_page_shows_hops_in_order_with_app_lines() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get(&format!("/trace/{TRACE_ID}")).await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    let p = h.last_search();
    assert_eq!(
        p.get("q").map(String::as_str),
        Some(&*format!("trace_id:{TRACE_ID}"))
    );
    assert_eq!(p.get("limit").map(String::as_str), Some("1000"));

    // The outer hop (gateway -> fib on node-2) comes before the inner one (fib -> fibcalc on node-3).
    let outer = html.find("gateway @ node-1").context("outer hop caller")?;
    let inner = html.find("fib @ node-2").context("inner hop caller")?;
    assert!(outer < inner, "{html}");
    for want in [
        ">node-2</a>",
        ">node-3</a>",
        "GET /fib/10",
        "100 ms",
        "60.0 ms",
        "computing fib(10) for trace",
        // Outer hop spans the whole axis, the inner one 30..90 ms of 0..100 ms.
        "left: 0.00%; width: 100.00%",
        "left: 30.00%; width: 60.00%",
        "2 hops",
    ] {
        assert!(html.contains(want), "missing {want:?} in:\n{html}");
    }

    let (status, _) = h.get("/trace/not%20a%20trace").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h.get(&format!("/trace/{}", "a".repeat(129))).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    Ok(())
}

/// Regression (issue 16): the shipper indexes the `X-Request-Id` value `req-42_a.b` as
/// a trace id, but the web allowed no dots, so its trace page was a 400.
#[tokio::test]
async fn trace_page_accepts_a_request_id_with_dots() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/trace/req-42_a.b").await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    let p = h.last_search();
    assert_eq!(p.get("q").map(String::as_str), Some("trace_id:req-42_a.b"));
    assert!(html.contains("req-42_a.b"), "{html}");
    Ok(())
}

/// Regression (issue 16): a search row whose trace id is `req-42_a.b` had no trace link.
#[tokio::test]
async fn search_row_links_a_request_id_with_dots_to_its_trace() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/?q=dotted").await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("href=\"/trace/req-42_a.b\""), "{html}");
    Ok(())
}

#[tokio::test]
async fn tail_page_opens_an_event_source_on_the_proxy() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/tail/fib?filter=level:error").await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("data-app=\"fib\""), "{html}");
    assert!(html.contains("value=\"level:error\""), "{html}");
    assert!(
        html.contains("/ui/tail-stream?q=app%3Afib%20level%3Aerror"),
        "{html}"
    );
    assert!(html.contains("src=\"/static/app.js\""), "{html}");

    let resp = h
        .http
        .get(format!("{}/static/app.js", h.web))
        .send()
        .await?;
    assert!(resp.headers()["content-type"]
        .to_str()?
        .contains("javascript"));
    let js = resp.text().await?;
    assert!(
        js.contains("new EventSource('/ui/tail-stream?q=' + encodeURIComponent('app:' + app + ' ' + filter))"),
        "{js}"
    );
    assert!(js.contains("\"dropped\""), "{js}");
    assert!(
        !js.contains("innerHTML"),
        "log text must never go through innerHTML"
    );

    let (status, _) = h.get("/tail/fib%20OR%20x").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let resp = h
        .http
        .get(format!("{}/static/app.css", h.web))
        .send()
        .await?;
    assert!(resp.headers()["content-type"]
        .to_str()?
        .starts_with("text/css"));
    assert!(resp.text().await?.contains("prefers-color-scheme: dark"));
    Ok(())
}

/// Issue 6: the tail caps how many lines per second it renders (200 unless `rate`
/// says otherwise) and has a place for both notices: dropped by the indexer, skipped
/// by the cap.
#[tokio::test]
async fn tail_page_caps_its_render_rate_and_shows_both_notices() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/tail/fib").await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("data-rate=\"200\""), "{html}");
    assert!(html.contains("id=\"tail-dropped\""), "{html}");
    assert!(html.contains("id=\"tail-skipped\""), "{html}");
    let (_, html) = h.get("/tail/fib?rate=5&filter=x").await?;
    assert!(html.contains("data-rate=\"5\""), "{html}");
    let (status, html) = h.get("/tail/fib?rate=0").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("invalid rate"), "{html}");

    let js = h
        .http
        .get(format!("{}/static/app.js", h.web))
        .send()
        .await?
        .text()
        .await?;
    assert!(js.contains("lines skipped (rate capped)"), "{js}");
    assert!(js.contains("lines dropped"), "{js}");
    assert!(js.contains("root.dataset.rate"), "{js}");
    Ok(())
}

#[tokio::test]
async fn tail_stream_proxies_the_indexers_events() -> Result<()> {
    let h = Harness::start().await?;
    let mut resp = h
        .http
        .get(format!("{}/ui/tail-stream?q=app%3Afib", h.web))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(body.contains("tail line for [app:fib]") && body.contains("event: dropped")) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .with_context(|| format!("no full event before the deadline; got {body:?}"))??
            .with_context(|| format!("stream ended early; got {body:?}"))?;
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(body.contains("data: {"), "{body}");
    assert!(body.contains(r#"{"dropped":7}"#), "{body}");
    assert!(body.contains("id: ep-42"), "event ids pass through: {body}");

    // An EventSource reconnecting sends the last id; the indexer gets it.
    let mut resp = h
        .http
        .get(format!("{}/ui/tail-stream?q=app%3Afib", h.web))
        .header("last-event-id", "ep-42")
        .send()
        .await?;
    let mut body = String::new();
    while !body.contains("event: dropped") {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .with_context(|| format!("no resumed event before the deadline; got {body:?}"))??
            .with_context(|| format!("stream ended early; got {body:?}"))?;
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        body.contains("tail line for [app:fib] after [ep-42]"),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn apps_page_lists_apps_with_tasks_and_links() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/apps").await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    for want in [
        "<h2>fib</h2>",
        "<h2>frontend</h2>",
        "3/3 running",
        "0/1 running",
        "fib.aaaa1111",
        "fib.cccc3333",
        "TASK_STAGING",
        "2026-11-23 09:00:00.000",
        "href=\"/?q=app%3Afib\"",
        "href=\"/tail/fib\"",
        "href=\"/?q=host%3Anode-2\"",
        "sandtrail demo-fib",
        "5 restarts",
    ] {
        assert!(html.contains(want), "missing {want:?} in:\n{html}");
    }
    Ok(())
}

/// Issue 6: every instance shows its health and restarts; the failure cause is
/// escaped like any other upstream text.
#[tokio::test]
async fn apps_page_shows_each_instances_health_and_restarts() -> Result<()> {
    let h = Harness::start().await?;
    let (_, html) = h.get("/apps").await?;
    let row = |task: &str| -> String {
        let at = html
            .find(task)
            .unwrap_or_else(|| panic!("no {task} in:\n{html}"));
        let end = html[at..].find("</tr>").map_or(html.len(), |e| at + e);
        html[at..end].to_string()
    };
    let healthy = row("fib.aaaa1111");
    assert!(healthy.contains(">healthy</span>"), "{healthy}");
    assert!(
        healthy.contains("<td class=\"num restarts\">0</td>"),
        "{healthy}"
    );
    let failing = row("fib.bbbb2222");
    assert!(failing.contains("class=\"health-unhealthy\""), "{failing}");
    assert!(
        failing.contains("&#60;b&#62;HTTP 503&#60;/b&#62; (2 consecutive failures)"),
        "{failing}"
    );
    assert!(
        failing.contains("<td class=\"num restarts\">4</td>"),
        "{failing}"
    );
    let staging = row("fib.cccc3333");
    assert!(staging.contains(">unknown</span>"), "{staging}");
    assert!(
        staging.contains("0 of 1 health checks reported"),
        "{staging}"
    );
    assert!(
        staging.contains("<td class=\"num restarts\">1</td>"),
        "{staging}"
    );
    assert!(!html.contains("<b>HTTP"), "a failure cause must be escaped");
    Ok(())
}

#[tokio::test]
async fn hosts_page_lists_agents_with_task_counts() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/hosts").await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    for want in [
        "href=\"/?q=host%3Anode-1\"",
        ">node-2</a>",
        "10.0.0.1",
        "rack:a",
        "active",
        "s ago",
        "<td class=\"num\">2</td>",
        "<td class=\"num\">1</td>",
    ] {
        assert!(html.contains(want), "missing {want:?} in:\n{html}");
    }
    Ok(())
}

/// Issue 6: a host's resources read "used / offered", used being what the apps of the
/// tasks placed on it take.
#[tokio::test]
async fn hosts_page_shows_resources_used_of_offered() -> Result<()> {
    let h = Harness::start().await?;
    let (_, html) = h.get("/hosts").await?;
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = squash(&html);
    // node-1 runs one fib task (0.5 cpus, 64 MiB), node-2 two.
    for want in [
        "data-resource=\"cpus\"> <span class=\"res-name\">cpus</span> <span class=\"res-amount\">0.5 / 4</span>",
        "<span class=\"res-amount\">64 / 8192 MiB</span>",
        "<span class=\"res-amount\">1 / 4</span>",
        "<span class=\"res-amount\">128 / 8192 MiB</span>",
        "title=\"25% in use\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    Ok(())
}

/// Issue 14: back-pressure shows per host. Logs on disk read against the tasks'
/// budgets, bytes dropped for a budget and a used spool are highlighted, and "reading
/// paused" is a badge on the paused host only. A host whose figures are unreadable is
/// still listed, escaped, as not reporting them.
#[tokio::test]
async fn hosts_page_shows_each_agents_log_budget_spool_and_pause() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/hosts").await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = squash(&html);
    // Each host's row, from its name to the next row.
    let row = |host: &str| -> String {
        let start = text
            .find(&format!(">{host}</a>"))
            .unwrap_or_else(|| panic!("no row for {host} in:\n{text}"));
        let end = text[start..]
            .find("</tr>")
            .map_or(text.len(), |e| start + e);
        text[start..end].to_string()
    };

    let n1 = row("node-1");
    for want in [
        "<span class=\"badge badge-bad\"",
        ">reading paused: spool full</span>",
        "<div class=\"res res-over\" data-shipper=\"logs\"> <span class=\"res-name\">logs</span> <span class=\"res-amount\">96 / 64 MiB</span>",
        "title=\"100% of the tasks' log budgets on disk\"",
        "<div class=\"res res-over\" data-shipper=\"dropped\"",
        "<span class=\"res-amount\">123456 bytes</span>",
        "<div class=\"res res-warn\" data-shipper=\"spool\"> <span class=\"res-name\">spool</span> <span class=\"res-amount\">1024 / 1024 MiB</span>",
        "title=\"100% of the spool in use\"",
        "<span class=\"res-amount\">300 MiB</span>",
    ] {
        assert!(n1.contains(want), "node-1 misses {want:?} in:\n{n1}");
    }

    let n2 = row("node-2");
    for want in [
        "<div class=\"res\" data-shipper=\"logs\"> <span class=\"res-name\">logs</span> <span class=\"res-amount\">16 / 64 MiB</span>",
        "title=\"25% of the tasks' log budgets on disk\"",
        "<div class=\"res\" data-shipper=\"dropped\"",
        "<span class=\"res-amount\">0 bytes</span>",
        "<div class=\"res\" data-shipper=\"spool\"> <span class=\"res-name\">spool</span> <span class=\"res-amount\">0 / 1024 MiB</span>",
        "title=\"0% of the spool in use\"",
    ] {
        assert!(n2.contains(want), "node-2 misses {want:?} in:\n{n2}");
    }
    assert!(!n2.contains("badge"), "node-2 is not paused:\n{n2}");

    let n3 = row("node-3");
    assert!(
        n3.contains("<span class=\"dim\">not reported</span>"),
        "{n3}"
    );
    assert!(!n3.contains("data-shipper"), "{n3}");
    assert!(
        n3.contains("<td>rack:&#60;b&#62;c&#60;/b&#62;</td>"),
        "{n3}"
    );
    assert!(
        !html.contains("<b>c</b>") && !html.contains("<script>alert"),
        "{html}"
    );
    assert_eq!(
        html.matches("reading paused: spool full").count(),
        1,
        "{html}"
    );
    Ok(())
}

#[tokio::test]
async fn search_survives_a_dead_scheduler_but_cluster_pages_report_it() -> Result<()> {
    let seen: Seen = Arc::default();
    let indexer = serve(fake_indexer(seen)).await?;
    // A port that was just free: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", l.local_addr()?)
    };
    let service = Web::new(WebConfig {
        indexer_url: indexer,
        scheduler_url: dead.clone(),
    });
    let web = serve(service.router()).await?;
    let http = reqwest::Client::new();

    let resp = http.get(format!("{web}/")).send().await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().await?.contains("frontend line"));

    let resp = http.get(format!("{web}/apps")).send().await?;
    assert_eq!(resp.status().as_u16(), 502);
    let html = resp.text().await?;
    assert!(
        html.contains("scheduler at") && html.contains(&dead),
        "{html}"
    );

    let metrics = service.metrics();
    assert!(
        metrics.contains("sandtrail_web_requests_total{page=\"apps\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sandtrail_web_upstream_errors_total{upstream=\"scheduler\"} 2"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn shutdown_ends_open_tail_streams() -> Result<()> {
    let seen: Seen = Arc::default();
    let indexer = serve(fake_indexer(seen.clone())).await?;
    let scheduler = serve(fake_scheduler()).await?;
    let token = tokio_util::sync::CancellationToken::new();
    let service = Web::new(WebConfig {
        indexer_url: indexer,
        scheduler_url: scheduler,
    })
    .with_token(Some("secret".into()))
    .with_shutdown(token.clone());
    let web = serve(service.router()).await?;

    // The cluster token goes along on upstream calls.
    let page = reqwest::get(format!("{web}/")).await?;
    assert_eq!(page.status().as_u16(), 200);
    let last = seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|p| !p.contains_key("_path"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(last.get("_token").map(String::as_str), Some("secret"));

    let mut resp = reqwest::get(format!("{web}/ui/tail-stream?q=app%3Afib")).await?;
    assert_eq!(resp.status().as_u16(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .context("first chunk")??;
    assert!(first.is_some());
    assert!(service.metrics().contains("sandtrail_web_tail_streams 1\n"));

    token.cancel();
    // The fake indexer never ends its stream: only the shutdown can end ours.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::timeout_at(deadline, resp.chunk())
        .await
        .context("stream still open after shutdown")??
        .is_some()
    {}
    while !service.metrics().contains("sandtrail_web_tail_streams 0\n") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauge never returned to 0"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn rows_expand_to_every_field_with_include_and_exclude_filters() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/?q=level%3Aerror&range=1h").await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    for want in [
        "<details class=\"rec\">",
        // The record's fields, each with + and − links that keep the query and range.
        ">trace_id</th>",
        "href=\"/?q=level%3Aerror%20host%3Anode-1&#38;range=1h\"",
        "href=\"/?q=level%3Aerror%20-host%3Anode-1&#38;range=1h\"",
        &format!("href=\"/?q=level%3Aerror%20trace_id%3A{TRACE_ID}&#38;range=1h\""),
        // The context link names the record's task and time.
        "href=\"/context?task=fib.0f3c1a2b-aaaa-bbbb&#38;ts=2026-11-23T10%3A00%3A00.123Z",
    ] {
        assert!(html.contains(want), "missing {want:?} in:\n{html}");
    }
    // The summary still shows the message escaped.
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script>alert"), "{html}");
    Ok(())
}

#[tokio::test]
async fn sidebar_lists_top_values_as_filter_links() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/?q=app%3Afib").await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    let p = h.last_at("fields");
    assert_eq!(p.get("q").map(String::as_str), Some("app:fib"));
    assert_eq!(p.get("start").map(String::as_str), Some("now-15m"));
    assert_eq!(p.get("size").map(String::as_str), Some("10"));
    for want in [
        "<aside class=\"side\"",
        "<h3>fields.user</h3>",
        // Values from logs are escaped, in text and in links.
        "&#60;b&#62;bob&#60;/b&#62;",
        "href=\"/?q=app%3Afib%20fields.user%3A%22%3Cb%3Ebob%3C%2Fb%3E%22&#38;range=15m\"",
        // Numbers become plain terms.
        "href=\"/?q=app%3Afib%20-fields.user%3A7&#38;range=15m\"",
        "href=\"/?q=app%3Afib%20host%3Anode-2&#38;range=15m\"",
        "<span class=\"n\">12</span>",
    ] {
        assert!(html.contains(want), "missing {want:?} in:\n{html}");
    }
    assert!(!html.contains("<b>bob"), "{html}");
    // A field without values is left out rather than shown empty.
    assert!(!html.contains("fields.empty"), "{html}");

    // An indexer without /api/v1/fields still serves the page, just with an empty sidebar.
    let indexer = serve(fake_indexer_without_analytics(Arc::default())).await?;
    let scheduler = serve(fake_scheduler()).await?;
    let web = serve(web::router(WebConfig {
        indexer_url: indexer,
        scheduler_url: scheduler,
    }))
    .await?;
    let resp = reqwest::get(format!("{web}/?q=app%3Afib")).await?;
    assert_eq!(resp.status().as_u16(), 200);
    let html = resp.text().await?;
    assert!(html.contains("computing fib(10)"), "{html}");
    assert!(!html.contains("id=\"side-fields\""), "{html}");
    Ok(())
}

/// Issue 6 (first paint over 10M records): the rows go out as soon as the search
/// answers; the histogram and the field counts, slow over many records, follow in the
/// same response once they are in.
#[tokio::test]
async fn search_rows_are_sent_before_the_histogram_and_sidebar() -> Result<()> {
    // Closed until the rows have arrived; a permit per call, whenever it comes in.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let gated = |gate: Arc<tokio::sync::Semaphore>, body: serde_json::Value| {
        get(move || async move {
            gate.acquire().await.expect("gate open").forget();
            Json(body)
        })
    };
    let histogram = serde_json::to_value(fake_histogram().await.0)?;
    let indexer = Router::new()
        .route("/api/v1/search", get(fake_search))
        .with_state(Seen::default())
        .route("/api/v1/histogram", gated(gate.clone(), histogram))
        .route(
            "/api/v1/fields",
            gated(
                gate.clone(),
                json!({"fields": [{"field": "host", "values": [{"value": "node-1", "count": 12}]}]}),
            ),
        );
    let web = serve(web::router(WebConfig {
        indexer_url: serve(indexer).await?,
        scheduler_url: serve(fake_scheduler()).await?,
    }))
    .await?;

    let mut resp = reqwest::get(format!("{web}/?q=app%3Afib")).await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()?
        .starts_with("text/html"));
    let mut body = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !body.contains("</section>") {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .with_context(|| format!("rows not sent while the histogram waits: {body}"))??
            .with_context(|| format!("page ended early: {body}"))?;
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(body.contains("computing fib(10)"), "{body}");
    assert!(!body.contains("id=\"hist-bars\""), "{body}");
    assert!(!body.contains("id=\"side-fields\""), "{body}");

    gate.add_permits(2);
    while let Some(chunk) = tokio::time::timeout_at(deadline, resp.chunk()).await?? {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(body.contains("id=\"hist-bars\""), "{body}");
    assert!(body.contains("id=\"side-fields\""), "{body}");
    assert!(body.trim_end().ends_with("</html>"), "{body}");
    assert_eq!(body.matches("<!doctype html>").count(), 1, "{body}");
    assert_eq!(body.matches("class=\"hits\"").count(), 1, "{body}");
    Ok(())
}

#[tokio::test]
async fn histogram_bars_carry_their_bounds_for_drag_to_zoom() -> Result<()> {
    let h = Harness::start().await?;
    let (_, html) = h.get("/").await?;
    assert!(
        html.contains(
            "data-start=\"2026-11-23T09:59:00.000Z\" data-end=\"2026-11-23T10:00:00.000Z\""
        ),
        "{html}"
    );
    let js = h
        .http
        .get(format!("{}/static/app.js", h.web))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        js.contains("pointerdown") && js.contains("dataset.start"),
        "{js}"
    );
    Ok(())
}

#[tokio::test]
async fn context_page_shows_the_tasks_lines_around_the_record() -> Result<()> {
    let h = Harness::start().await?;
    let url = "/context?task=fib.0f3c1a2b-aaaa-bbbb&ts=2026-11-23T10%3A00%3A00.123Z&source=fib.0f3c1a2b-aaaa-bbbb%2Fstdout&offset=30";
    let (status, html) = h.get(url).await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    let p = h.last_at("context");
    assert_eq!(
        p.get("task").map(String::as_str),
        Some("fib.0f3c1a2b-aaaa-bbbb")
    );
    assert_eq!(
        p.get("ts").map(String::as_str),
        Some("2026-11-23T10:00:00.123Z")
    );
    assert_eq!(
        p.get("source").map(String::as_str),
        Some("fib.0f3c1a2b-aaaa-bbbb/stdout")
    );
    assert_eq!(p.get("offset").map(String::as_str), Some("30"));
    assert_eq!(p.get("n").map(String::as_str), Some("20"));

    // Oldest first, with the record itself marked.
    let order: Vec<usize> = ["before one", "before two", "the record itself", "after one"]
        .iter()
        .map(|m| {
            html.find(m)
                .unwrap_or_else(|| panic!("missing {m}:\n{html}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    let focus = html.find("id=\"focus\"").context("focused row")?;
    assert!(focus < order[2] && focus > order[1], "{html}");
    assert!(html.contains("before two &#60;i&#62;"), "{html}");
    assert!(
        html.contains("n=80#focus"),
        "a link to widen the context:\n{html}"
    );

    let (status, _) = h.get(&format!("{url}&n=100000")).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, html) = h.get("/context?task=x&ts=yesterday").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("invalid ts"), "{html}");
    Ok(())
}

#[tokio::test]
async fn slow_page_lists_the_slowest_calls_and_percentiles_by_host() -> Result<()> {
    let h = Harness::start().await?;
    let (status, html) = h.get("/slow?range=1h").await?;
    assert_eq!(status, StatusCode::OK, "{html}");
    let p = h.last_search();
    assert_eq!(p.get("sort").map(String::as_str), Some("latency_desc"));
    assert_eq!(p.get("q").map(String::as_str), Some("stream:access"));
    assert_eq!(p.get("start").map(String::as_str), Some("now-1h"));
    let l = h.last_at("latency");
    assert_eq!(l.get("by").map(String::as_str), Some("host"));
    assert_eq!(l.get("q").map(String::as_str), Some("stream:access"));

    let slow = html.find("250 ms").context("slowest call")?;
    let fast = html.find("12.5 ms").context("faster call")?;
    assert!(slow < fast, "{html}");
    for want in [
        &format!("href=\"/trace/{TRACE_ID}\"") as &str,
        "gateway @ node-1",
        "2 of 77",
        ">node-2</a>",
        "200 ms",
        // A group narrows the page to itself.
        "href=\"/slow?q=host%3Anode-3&#38;by=host&#38;range=1h\"",
        "st-5xx",
    ] {
        assert!(html.contains(want), "missing {want:?} in:\n{html}");
    }

    let (_, _) = h.get("/slow?q=app%3Afib&by=task").await?;
    assert_eq!(
        h.last_at("latency").get("q").map(String::as_str),
        Some("stream:access AND (app:fib)")
    );
    assert_eq!(
        h.last_at("latency").get("by").map(String::as_str),
        Some("task")
    );
    let (status, _) = h.get("/slow?by=planet").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn trace_page_shows_the_gap_before_each_hop() -> Result<()> {
    let h = Harness::start().await?;
    let (_, html) = h.get(&format!("/trace/{TRACE_ID}")).await?;
    // The inner hop starts 30 ms after the outer one: that is its gap.
    assert!(html.contains("<td class=\"gap\">30.0 ms</td>"), "{html}");
    assert!(
        html.contains("class=\"gap-bar\" style=\"left: 0.00%; width: 30.00%\""),
        "{html}"
    );
    Ok(())
}

/// Issue 15: every page was readable without a credential. With tokens configured, a
/// page without a session or token goes to the sign-in page, the stream answers 401,
/// an agent token is refused, and the user's token is never what goes upstream.
#[tokio::test]
async fn pages_need_a_session_or_a_token_that_may_read() -> Result<()> {
    use protocol::auth::{Keyring, Role};
    let seen: Seen = Arc::default();
    let indexer = serve(fake_indexer(seen.clone())).await?;
    let scheduler = serve(fake_scheduler()).await?;
    let mut keyring = Keyring::new();
    keyring.add("rd", Role::Read).add("ag", Role::Agent);
    let service = Web::new(WebConfig {
        indexer_url: indexer,
        scheduler_url: scheduler,
    })
    .with_token(Some("ui-own".into()))
    .with_keyring(keyring);
    let web = serve(service.router()).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    let page = http.get(format!("{web}/apps?x=1")).send().await?;
    assert_eq!(page.status().as_u16(), 303);
    let download = http.get(format!("{web}/download?q=a")).send().await?;
    assert_eq!(
        download.status().as_u16(),
        303,
        "downloads need a session too"
    );
    assert_eq!(page.headers()["location"], "/login?next=/apps%3Fx%3D1");
    let stream = http.get(format!("{web}/ui/tail-stream?q=a")).send().await?;
    assert_eq!(stream.status().as_u16(), 401);
    assert!(stream.headers().contains_key("www-authenticate"));
    for open in ["/login", "/static/app.css", "/static/app.js"] {
        let r = http.get(format!("{web}{open}")).send().await?;
        assert_eq!(r.status().as_u16(), 200, "{open}");
        assert_eq!(r.headers()["x-frame-options"], "DENY", "{open}");
    }
    let agent = http.get(format!("{web}/")).bearer_auth("ag").send().await?;
    assert_eq!(agent.status().as_u16(), 403);
    let read = http.get(format!("{web}/")).bearer_auth("rd").send().await?;
    assert_eq!(read.status().as_u16(), 200);
    let last = seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|p| !p.contains_key("_path"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        last.get("_token").map(String::as_str),
        Some("ui-own"),
        "the UI calls upstream with its own credential"
    );

    // A one-time link signs in once; the cookie then opens pages.
    let link = service.one_time_link(Role::Read);
    let first = http.get(format!("{web}{link}")).send().await?;
    assert_eq!(first.status().as_u16(), 303);
    let cookie = first.headers()["set-cookie"].to_str()?.to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap_or_default().to_string();
    let with_cookie = http
        .get(format!("{web}/hosts"))
        .header("cookie", &session)
        .send()
        .await?;
    assert_eq!(with_cookie.status().as_u16(), 200);
    assert_eq!(
        http.get(format!("{web}{link}"))
            .send()
            .await?
            .status()
            .as_u16(),
        401
    );
    Ok(())
}

/// Issue 20: a download follows the indexer's cursor to the end of the result, but
/// never past the cap, however many pages the indexer offers.
#[tokio::test]
async fn download_follows_the_cursor_and_stops_at_the_cap() -> Result<()> {
    let h = Harness::start().await?;
    let resp = h
        .http
        .get(format!(
            "{}/download?q=endless&range=1h&format=ndjson",
            h.web
        ))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    assert_eq!(resp.headers()["x-sandtrail-download-cap"], "100000");
    assert!(resp.headers()["content-disposition"]
        .to_str()?
        .starts_with("attachment"));
    let body = resp.text().await?;
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 100_000, "the cap holds");
    let first: LogRecord = serde_json::from_str(lines[0])?;
    assert_eq!(first.app, "endless");
    let calls: Vec<_> = h
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.get("q").map(String::as_str) == Some("endless"))
        .cloned()
        .collect();
    assert_eq!(calls.len(), 100, "1000 a page, no page beyond the cap");
    assert_eq!(calls[1].get("cursor").map(String::as_str), Some("p1"));
    assert!(calls.iter().all(|c| c["limit"] == "1000"));
    // "now" is pinned once, so every page asks for the same range.
    assert!(calls
        .iter()
        .all(|c| c["end"] == calls[0]["end"] && c["end"] != "now"));
    Ok(())
}

#[tokio::test]
async fn download_csv_escapes_fields_and_has_the_views_columns() -> Result<()> {
    let h = Harness::start().await?;
    let (status, body) = h
        .get("/download?q=csvtricky&format=csv&cols=user&sort=oldest")
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        "ts,host,app,instance,task,stream,level,user,msg\r\n\
         2026-11-23T10:00:00.500Z,node-1,fib,2,fib.0f3c1a2b-aaaa-bbbb,stdout,warn,\"al,ice\",\
         \"said \"\"hi, there\"\"\nsecond line\"\r\n"
    );
    assert_eq!(
        h.last_search().get("sort").map(String::as_str),
        Some("oldest")
    );
    let (status, body) = h.get("/download?q=x&format=xlsx").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("xlsx"), "{body}");
    let (status, _) = h.get("/download?q=x&cols=a%20b").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    Ok(())
}

/// Issue 20: the query box's autocomplete reads field names and top values of the
/// range from `/ui/fields`, as JSON, over the whole range (not the typed query).
#[tokio::test]
async fn ui_fields_gives_the_ranges_fields_and_values_as_json() -> Result<()> {
    let h = Harness::start().await?;
    let (status, body) = h.get("/ui/fields?range=1h&q=app%3Afib").await?;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["fields"][0]["field"], "host");
    assert_eq!(v["fields"][0]["values"][0]["value"], "node-1");
    assert_eq!(
        v["fields"][2]["values"][1]["value"], "7",
        "values as query text"
    );
    let asked = h.last_at("fields");
    assert_eq!(asked.get("start").map(String::as_str), Some("now-1h"));
    assert_eq!(asked.get("q").map(String::as_str), Some(""));
    assert_eq!(asked.get("size").map(String::as_str), Some("20"));
    let (status, _) = h.get("/ui/fields?range=2y").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The search page tells its script where to ask.
    let (_, page) = h.get("/?q=x&range=1h").await?;
    assert!(
        page.contains("data-suggest=\"/ui/fields?range=1h\""),
        "{page}"
    );
    Ok(())
}

/// Issue 20: cells a spreadsheet would run as a formula get a leading `'`, inside the
/// field's quotes when it has them, so the file opens as text.
#[tokio::test]
async fn download_csv_neutralises_formulas() -> Result<()> {
    let h = Harness::start().await?;
    let (status, body) = h
        .get("/download?q=csvformula&format=csv&cols=user,delta")
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        "ts,host,app,instance,task,stream,level,user,delta,msg\r\n\
         2026-11-23T10:00:00.500Z,node-1,fib,2,fib.0f3c1a2b-aaaa-bbbb,stdout,,'@SUM(1+1),'-3,\
         \"'=HYPERLINK(\"\"http://evil.example\"\",\"\"click\"\")\"\r\n"
    );
    Ok(())
}

/// A web with readers and a deployer, keeping its saved searches in `path`.
async fn web_with_saved_searches(path: std::path::PathBuf) -> Result<String> {
    use protocol::auth::{Keyring, Role};
    let seen: Seen = Arc::default();
    let indexer = serve(fake_indexer(seen)).await?;
    let scheduler = serve(fake_scheduler()).await?;
    let mut keyring = Keyring::new();
    keyring.add("rd", Role::Read).add("dp", Role::Deploy);
    let service = Web::new(WebConfig {
        indexer_url: indexer,
        scheduler_url: scheduler,
    })
    .with_token(Some("ui-own".into()))
    .with_keyring(keyring)
    .with_saved_searches(path)?;
    serve(service.router()).await
}

/// Issue 20: a saved search is a name for the search page's query, range, order and
/// columns; the deploy role saves and deletes, everyone who reads sees and opens them,
/// and they outlive the web process.
#[tokio::test]
async fn saved_searches_are_saved_listed_opened_and_deleted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("web").join("saved-searches.json");
    let web = web_with_saved_searches(path.clone()).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let save = |token: &'static str, form: Vec<(&'static str, &'static str)>| {
        let (http, web) = (http.clone(), web.clone());
        async move {
            let r = http
                .post(format!("{web}/ui/saved"))
                .bearer_auth(token)
                .form(&form)
                .send()
                .await?;
            let status = r.status().as_u16();
            let location = r
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap_or("").to_string());
            anyhow::Ok((status, location, r.text().await?))
        }
    };
    let fib_errors = vec![
        ("name", " fib errors "),
        ("q", "app:fib level:error"),
        ("range", "1h"),
        ("sort", "oldest"),
        ("cols", "latency_ms"),
        ("tz", "utc"),
    ];
    let (status, _, body) = save("rd", fib_errors.clone()).await?;
    assert_eq!(status, 403, "read may not save: {body}");
    assert!(body.contains("deploy role"), "{body}");
    let (status, location, body) = save("dp", fib_errors.clone()).await?;
    assert_eq!(status, 303, "{body}");
    let href = "/?q=app%3Afib%20level%3Aerror&range=1h&sort=oldest&cols=latency_ms";
    assert_eq!(
        location.as_deref(),
        Some(href),
        "the zone is the reader's own"
    );

    // Listed for a reader, who gets no save form or delete button.
    let page = |token: &'static str, path: &'static str| {
        let (http, web) = (http.clone(), web.clone());
        async move {
            anyhow::Ok(
                http.get(format!("{web}{path}"))
                    .bearer_auth(token)
                    .send()
                    .await?
                    .text()
                    .await?,
            )
        }
    };
    let read = page("rd", "/?q=other").await?;
    assert!(read.contains("saved searches (1)"), "{read}");
    let link = format!(
        "<a class=\"saved-link\" href=\"{}\" title=\"app:fib level:error\">fib errors</a>",
        href.replace('&', "&#38;")
    );
    assert!(read.contains(&link), "{read}");
    assert!(
        !read.contains("save-search") && !read.contains("saved-delete"),
        "{read}"
    );
    let deployer = page(
        "dp",
        "/?q=app%3Afib%20level%3Aerror&range=1h&sort=oldest&cols=latency_ms",
    )
    .await?;
    assert!(deployer.contains("class=\"save-search\""), "{deployer}");
    assert!(
        deployer.contains("<li class=\"current\">"),
        "this page is that search"
    );

    // A taken name needs `replace`; bad names, queries and origins are refused by name.
    let (status, _, body) = save("dp", vec![("name", "fib errors"), ("q", "x")]).await?;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("replace"), "{body}");
    let (status, _, _) = save(
        "dp",
        vec![("name", "fib errors"), ("q", "x"), ("replace", "1")],
    )
    .await?;
    assert_eq!(status, 303);
    for (form, named) in [
        (vec![("name", "<b>x</b>"), ("q", "x")], "invalid name"),
        (vec![("name", ""), ("q", "x")], "invalid name"),
        (vec![("name", "ok"), ("q", "x"), ("range", "3w")], "3w"),
        (vec![("name", "ok"), ("q", "x"), ("sort", "up")], "sort"),
        (vec![("name", "ok"), ("q", "x"), ("cols", "a b")], "cols"),
    ] {
        let (status, _, body) = save("dp", form.clone()).await?;
        assert_eq!(status, 400, "{form:?}: {body}");
        assert!(body.contains(named), "{form:?}: {body}");
    }
    let cross = http
        .post(format!("{web}/ui/saved"))
        .bearer_auth("dp")
        .header("origin", "http://evil.example")
        .form(&[("name", "evil"), ("q", "x")])
        .send()
        .await?;
    assert_eq!(cross.status().as_u16(), 403);

    // Kept across a restart of the web.
    let again = web_with_saved_searches(path.clone()).await?;
    let listed = http
        .get(format!("{again}/"))
        .bearer_auth("rd")
        .send()
        .await?
        .text()
        .await?;
    assert!(listed.contains(">fib errors</a>"), "{listed}");

    // Deleted by the deploy role only.
    let delete = |token: &'static str, name: &'static str| {
        let (http, web) = (http.clone(), web.clone());
        async move {
            anyhow::Ok(
                http.post(format!("{web}/ui/saved/delete"))
                    .bearer_auth(token)
                    .form(&[("name", name)])
                    .send()
                    .await?
                    .status()
                    .as_u16(),
            )
        }
    };
    assert_eq!(delete("rd", "fib errors").await?, 403);
    assert_eq!(delete("dp", "fib errors").await?, 303);
    assert_eq!(delete("dp", "fib errors").await?, 400, "gone");
    assert!(page("rd", "/").await?.contains("saved searches (0)"));
    Ok(())
}

/// Issue 20: a standalone `web` whose own token may only read asks the scheduler to
/// change an app for a user with the deploy role: the scheduler's 403 becomes a 403
/// page naming the missing role and the flag that fixes it, not a 502.
#[tokio::test]
async fn actions_with_a_read_only_ui_token_are_a_403_naming_the_role() -> Result<()> {
    use protocol::auth::{Keyring, Role};
    let seen: Seen = Arc::default();
    let indexer = serve(fake_indexer(seen)).await?;
    let scheduler = serve(fake_scheduler()).await?;
    let mut keyring = Keyring::new();
    keyring.add("dp", Role::Deploy);
    let web = serve(
        Web::new(WebConfig {
            indexer_url: indexer,
            scheduler_url: scheduler,
        })
        .with_token(Some("ui-read".into()))
        .with_keyring(keyring)
        .router(),
    )
    .await?;
    let http = reqwest::Client::new();
    for (path, form) in [
        (
            "/apps/action",
            vec![("app", "fib"), ("action", "scale"), ("instances", "2")],
        ),
        (
            "/hosts/action",
            vec![("agent", "node-1"), ("action", "drain")],
        ),
    ] {
        let resp = http
            .post(format!("{web}{path}"))
            .bearer_auth("dp")
            .form(&form)
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 403, "{path}");
        let body = resp.text().await?;
        assert!(
            body.contains("lacks the deploy role") && body.contains("--deploy-token"),
            "{path}: {body}"
        );
    }
    Ok(())
}
