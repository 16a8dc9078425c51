//! The read endpoints the web UI builds on (`/api/v1/fields`, `/context`, `/latency`,
//! `sort=latency_desc`, `highlight=true`), over a real socket on 127.0.0.1:0.

mod common;
use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use common::Server;
use flate2::write::GzEncoder;
use flate2::Compression;
use protocol::{Level, LogRecord, Stream, TaskMeta};
use reqwest::StatusCode;
use serde_json::Value;
use std::io::Write;

impl Server {
    async fn start() -> Result<Server> {
        common::serve(None, 1 << 20).await
    }

    async fn ingest(&self, records: &[LogRecord]) -> Result<()> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(&protocol::encode_ndjson(records))?;
        let resp = self
            .http
            .post(format!("{}/api/v1/ingest", self.base))
            .body(e.finish()?)
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
        Ok(())
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<(StatusCode, Value)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await?;
        Ok((resp.status(), resp.json().await?))
    }

    async fn ok(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let (status, body) = self.get(path, query).await?;
        assert_eq!(status, StatusCode::OK, "{path} {query:?}: {body}");
        Ok(body)
    }
}

fn base_ts() -> DateTime<Utc> {
    "2025-06-01T10:00:00Z".parse().unwrap()
}

/// 40 records: hosts node-1 (30) and node-2 (10), apps fib/web, latencies on the
/// fib ones, `fields.user` on every other record, all in two tasks.
fn corpus() -> Vec<LogRecord> {
    (0..40u64)
        .map(|i| {
            let host = if i % 4 == 0 { "node-2" } else { "node-1" };
            let app = if i % 2 == 0 { "fib" } else { "web" };
            let meta = TaskMeta {
                host: host.into(),
                app: app.into(),
                task: format!("{app}.1"),
                instance: 1,
                ports: vec![],
            };
            let msg = if i % 10 == 0 {
                format!("GET /fib/{i} timed out after retry")
            } else {
                format!("GET /fib/{i} ok")
            };
            let mut r = LogRecord::new(
                base_ts() + Duration::seconds(i as i64),
                &meta,
                Stream::Stdout,
                msg,
            );
            r.source = format!("{app}.log");
            r.offset = i + 1;
            if app == "fib" {
                r.latency_ms = Some(i as f64);
            }
            if i % 2 == 1 {
                r.fields.insert(
                    "user".into(),
                    serde_json::json!(if i % 3 == 0 { "alice" } else { "bob" }),
                );
            }
            r.level = Some(if i % 10 == 0 {
                Level::Error
            } else {
                Level::Info
            });
            r
        })
        .collect()
}

fn values_of<'a>(body: &'a Value, field: &str) -> Vec<(&'a str, u64)> {
    body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == field)
        .unwrap_or_else(|| panic!("no {field} in {body}"))["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["value"].as_str().unwrap(), v["count"].as_u64().unwrap()))
        .collect()
}

#[tokio::test]
async fn fields_gives_top_values_within_the_query() -> Result<()> {
    let s = Server::start().await?;
    s.ingest(&corpus()).await?;
    let all = s
        .ok("/api/v1/fields", &[("start", "2025-06-01T00:00:00Z")])
        .await?;
    let names: Vec<&str> = all["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["host", "app", "level", "stream", "fields.user"]);
    assert_eq!(values_of(&all, "host"), [("node-1", 30), ("node-2", 10)]);
    assert_eq!(values_of(&all, "app"), [("fib", 20), ("web", 20)]);
    assert_eq!(values_of(&all, "level"), [("info", 36), ("error", 4)]);
    assert_eq!(values_of(&all, "fields.user"), [("bob", 13), ("alice", 7)]);

    // Within the query, and cut to `size`.
    let fib = s
        .ok("/api/v1/fields", &[("q", "app:fib"), ("size", "1")])
        .await?;
    assert_eq!(values_of(&fib, "host"), [("node-1", 10)]);
    assert_eq!(values_of(&fib, "app"), [("fib", 20)]);
    assert_eq!(
        fib["fields"].as_array().unwrap().len(),
        4,
        "fib has no fields.*"
    );

    let (status, body) = s.get("/api/v1/fields", &[("size", "lots")]).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("lots"), "{body}");
    s.indexer.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn context_returns_neighbours_within_the_task_oldest_first() -> Result<()> {
    let s = Server::start().await?;
    let records = corpus();
    s.ingest(&records).await?;
    // fib.1 holds the even records 0, 2, .., 38; take record 20.
    let r = &records[20];
    let ts = r.ts.to_rfc3339();
    let offset = r.offset.to_string();
    let body = s
        .ok(
            "/api/v1/context",
            &[
                ("task", "fib.1"),
                ("ts", &ts),
                ("source", "fib.log"),
                ("offset", &offset),
                ("n", "3"),
            ],
        )
        .await?;
    let msgs = |key: &str| -> Vec<String> {
        body[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["msg"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        msgs("before"),
        ["GET /fib/14 ok", "GET /fib/16 ok", "GET /fib/18 ok"]
    );
    assert_eq!(body["record"]["msg"], "GET /fib/20 timed out after retry");
    assert_eq!(
        msgs("after"),
        ["GET /fib/22 ok", "GET /fib/24 ok", "GET /fib/26 ok"]
    );

    // At the edge of the task: nothing before the first record.
    let first = records[0].ts.to_rfc3339();
    let body = s
        .ok(
            "/api/v1/context",
            &[
                ("task", "fib.1"),
                ("ts", &first),
                ("source", "fib.log"),
                ("offset", "1"),
            ],
        )
        .await?;
    assert_eq!(body["before"].as_array().unwrap().len(), 0);
    assert_eq!(
        body["after"].as_array().unwrap().len(),
        10,
        "n defaults to 10"
    );

    // A record that does not exist: null, neighbours still found by position.
    let body = s
        .ok(
            "/api/v1/context",
            &[
                ("task", "fib.1"),
                ("ts", &ts),
                ("offset", "999"),
                ("n", "1"),
            ],
        )
        .await?;
    assert!(body["record"].is_null(), "{body}");
    assert_eq!(
        body["before"][0]["msg"],
        "GET /fib/20 timed out after retry"
    );

    let (status, _) = s.get("/api/v1/context", &[("ts", &ts)]).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "task is required");
    s.indexer.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn latency_groups_by_host_with_percentiles() -> Result<()> {
    let s = Server::start().await?;
    s.ingest(&corpus()).await?;
    let body = s.ok("/api/v1/latency", &[("by", "host")]).await?;
    let groups = body["groups"].as_array().unwrap();
    // fib records (even i): node-2 when i % 4 == 0 (0, 4, .., 36), node-1 otherwise.
    assert_eq!(groups.len(), 2, "{body}");
    assert_eq!(groups[0]["key"], "node-1");
    assert_eq!(groups[0]["count"], 10);
    assert_eq!(groups[1]["key"], "node-2");
    assert_eq!(groups[1]["count"], 10);
    assert_eq!(groups[1]["max"], 36.0);
    assert_eq!(groups[1]["avg"], 18.0);
    assert_eq!(groups[1]["p50"], 16.0);
    assert_eq!(groups[1]["p99"], 36.0);

    let by_app = s
        .ok("/api/v1/latency", &[("by", "app"), ("q", "level:error")])
        .await?;
    assert_eq!(by_app["groups"][0]["key"], "fib");
    assert_eq!(by_app["groups"][0]["count"], 4, "0, 10, 20, 30");
    assert_eq!(
        by_app["groups"].as_array().unwrap().len(),
        1,
        "web has no latency"
    );

    let (status, body) = s.get("/api/v1/latency", &[("by", "zone")]).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("zone"));
    s.indexer.shutdown().await;
    Ok(())
}

/// Every hit of `/api/v1/search` in `sort` order, `limit` a page along the cursor;
/// each page must say `total`.
async fn all_pages(s: &Server, sort: &str, limit: &str, total: u64) -> Result<Vec<Value>> {
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = s
            .ok(
                "/api/v1/search",
                &[("sort", sort), ("limit", limit), ("cursor", &cursor)],
            )
            .await?;
        assert_eq!(page["total"], total, "{sort}");
        seen.extend(page["hits"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(n) => cursor = n.to_string(),
            None => return Ok(seen),
        }
    }
}

#[tokio::test]
async fn latency_sort_pages_slowest_first() -> Result<()> {
    let s = Server::start().await?;
    s.ingest(&corpus()).await?;
    // Only the records with a latency.
    let seen: Vec<f64> = all_pages(&s, "latency_desc", "3", 20)
        .await?
        .iter()
        .map(|h| h["latency_ms"].as_f64().unwrap())
        .collect();
    let expected: Vec<f64> = (0..20).rev().map(|i| f64::from(i * 2)).collect();
    assert_eq!(seen, expected);
    // Default stays newest first.
    let page = s.ok("/api/v1/search", &[("limit", "1")]).await?;
    assert_eq!(page["hits"][0]["msg"], "GET /fib/39 ok");
    let (status, body) = s.get("/api/v1/search", &[("sort", "sideways")]).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let err = body["error"].as_str().unwrap();
    assert!(err.contains("sideways") && err.contains("oldest"), "{err}");
    s.indexer.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn oldest_sort_pages_in_time_order_and_refuses_the_other_orders_cursor() -> Result<()> {
    let s = Server::start().await?;
    s.ingest(&corpus()).await?;
    let ids: Vec<u64> = all_pages(&s, "oldest", "7", 40)
        .await?
        .iter()
        .map(|h| {
            let m = h["msg"].as_str().unwrap();
            m.split('/')
                .nth(2)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        (0..40).collect::<Vec<_>>(),
        "every record once, oldest first"
    );
    // A newest-first cursor means the opposite position: refused, not misread.
    let newest = s.ok("/api/v1/search", &[("limit", "3")]).await?;
    let other = newest["next"].as_str().unwrap();
    let (status, _) = s
        .get("/api/v1/search", &[("sort", "oldest"), ("cursor", other)])
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    s.indexer.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn highlight_gives_byte_ranges_of_matched_terms() -> Result<()> {
    let s = Server::start().await?;
    s.ingest(&corpus()).await?;
    let body = s
        .ok(
            "/api/v1/search",
            &[
                ("q", "\"timed out\" OR retry"),
                ("highlight", "true"),
                ("limit", "2"),
            ],
        )
        .await?;
    let hits = body["hits"].as_array().unwrap();
    let highlights = body["highlights"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert_eq!(highlights.len(), hits.len(), "parallel to hits");
    for (hit, ranges) in hits.iter().zip(highlights) {
        let msg = hit["msg"].as_str().unwrap();
        let words: Vec<&str> = ranges
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let (a, b) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
                &msg[a as usize..b as usize]
            })
            .collect();
        assert_eq!(words, ["timed", "out", "retry"], "{msg}");
    }
    // The same matches as HTML fragments, parallel to hits: a short message whole.
    assert_eq!(
        body["fragments"],
        serde_json::json!([
            ["GET /fib/30 <em>timed</em> <em>out</em> after <em>retry</em>"],
            ["GET /fib/20 <em>timed</em> <em>out</em> after <em>retry</em>"],
        ])
    );
    // Case-insensitive like the index, and absent unless asked.
    let body = s
        .ok(
            "/api/v1/search",
            &[("q", "GET app:fib"), ("highlight", "1"), ("limit", "1")],
        )
        .await?;
    assert_eq!(body["highlights"][0], serde_json::json!([[0, 3]]));
    assert_eq!(
        body["fragments"][0],
        serde_json::json!(["<em>GET</em> /fib/38 ok"])
    );
    let body = s.ok("/api/v1/search", &[("q", "retry")]).await?;
    assert!(body.get("highlights").is_none());
    assert!(body.get("fragments").is_none());
    s.indexer.shutdown().await;
    Ok(())
}

/// Log text is untrusted: a fragment escapes it, marks only the query's positive
/// terms of `msg`, and a hit matched by keyword fields alone has no fragment.
#[tokio::test]
async fn highlight_fragments_escape_log_text() -> Result<()> {
    let s = Server::start().await?;
    let mut recs = corpus();
    let mut evil = recs[0].clone();
    evil.ts = base_ts() + Duration::seconds(100);
    evil.offset = 1000;
    evil.msg = "<img src=x onerror=alert(1)> timeout & \"retry\" 'later'".into();
    recs.push(evil);
    s.ingest(&recs).await?;
    let body = s
        .ok(
            "/api/v1/search",
            &[
                ("q", "(timeout OR img) -\"retry now\""),
                ("highlight", "true"),
            ],
        )
        .await?;
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(
        body["fragments"],
        serde_json::json!([[
            "&lt;<em>img</em> src=x onerror=alert(1)&gt; <em>timeout</em> &amp; &quot;retry&quot; &#39;later&#39;"
        ]])
    );
    let body = s
        .ok(
            "/api/v1/search",
            &[("q", "app:fib"), ("highlight", "true"), ("limit", "1")],
        )
        .await?;
    assert_eq!(body["fragments"], serde_json::json!([[]]));
    assert_eq!(body["highlights"], serde_json::json!([[]]));
    s.indexer.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn histogram_by_level_splits_every_bucket_and_sums_to_its_count() -> Result<()> {
    let s = Server::start().await?;
    let levels = [
        Some(Level::Info),
        Some(Level::Warn),
        Some(Level::Error),
        None,
    ];
    let mut recs = corpus();
    for (i, r) in recs.iter_mut().enumerate() {
        r.level = levels[i % 4];
    }
    s.ingest(&recs).await?;
    let start = base_ts().to_rfc3339();
    let end = (base_ts() + Duration::minutes(1)).to_rfc3339();
    let h = s
        .ok(
            "/api/v1/histogram",
            &[("start", &start), ("end", &end), ("by", "level")],
        )
        .await?;
    let mut per_level = std::collections::BTreeMap::<String, u64>::new();
    for b in h["buckets"].as_array().unwrap() {
        let by = b["by"].as_object().cloned().unwrap_or_default();
        let sum: u64 = by.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(sum, b["count"].as_u64().unwrap(), "{b}");
        for (k, v) in by {
            *per_level.entry(k).or_default() += v.as_u64().unwrap();
        }
    }
    let want: std::collections::BTreeMap<String, u64> =
        [("", 10), ("error", 10), ("info", 10), ("warn", 10)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    assert_eq!(per_level, want);
    // With a query the split is of the matches only; without `by` there is none.
    let h = s
        .ok(
            "/api/v1/histogram",
            &[
                ("q", "level:warn"),
                ("start", &start),
                ("end", &end),
                ("by", "level"),
            ],
        )
        .await?;
    for b in h["buckets"].as_array().unwrap() {
        if b["count"].as_u64().unwrap() > 0 {
            assert_eq!(b["by"]["warn"], b["count"], "{b}");
            assert_eq!(b["by"].as_object().unwrap().len(), 1, "{b}");
        }
    }
    let plain = s
        .ok("/api/v1/histogram", &[("start", &start), ("end", &end)])
        .await?;
    assert!(plain["buckets"][0].get("by").is_none(), "{plain}");
    let (status, body) = s.get("/api/v1/histogram", &[("by", "user")]).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let err = body["error"].as_str().unwrap();
    assert!(err.contains("user") && err.contains("level"), "{err}");
    s.indexer.shutdown().await;
    Ok(())
}
