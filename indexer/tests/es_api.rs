//! The Elasticsearch-compatible subset over a real socket: `_bulk` then `_search`
//! with the query DSL, sorting, `search_after` and aggregations.

mod common;
use anyhow::Result;
use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

impl Server {
    async fn start(token: Option<&str>) -> Result<Server> {
        common::serve(token, 1 << 20).await
    }

    async fn bulk(&self, path: &str, lines: &[Value]) -> Result<(StatusCode, Value)> {
        let mut body = String::new();
        for l in lines {
            body.push_str(&l.to_string());
            body.push('\n');
        }
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-ndjson")
            .basic_auth("elastic", Some("s3cret"))
            .body(body)
            .send()
            .await?;
        Ok((resp.status(), resp.json().await?))
    }

    async fn search(&self, index: &str, body: Value) -> Result<Value> {
        let resp = self
            .http
            .post(format!("{}/{index}/_search", self.base))
            // Reading needs the token as much as writing (issue 15).
            .basic_auth("elastic", Some("s3cret"))
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        assert_eq!(status, StatusCode::OK, "{body}: {v}");
        Ok(v)
    }
}

fn doc(i: u64) -> Value {
    json!({
        "@timestamp": format!("2025-06-01T10:00:{:02}Z", i),
        "message": if i.is_multiple_of(5) { format!("request {i} timed out") } else { format!("request {i} ok") },
        "host": { "name": if i.is_multiple_of(2) { "node-1" } else { "node-2" } },
        "service": { "name": "fib" },
        "log": { "level": if i.is_multiple_of(5) { "error" } else { "info" } },
        "trace": { "id": format!("t{i}") },
        "latency_ms": i as f64 * 10.0,
        "user": { "name": if i < 10 { "alice" } else { "bob" } },
    })
}

fn msgs(resp: &Value) -> Vec<String> {
    resp["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["_source"]["message"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn bulk_dedups_by_id_and_reports_items_in_order() -> Result<()> {
    let s = Server::start(Some("s3cret")).await?;
    let mut lines = Vec::new();
    for i in 0..20 {
        lines.push(json!({ "index": { "_id": format!("id-{i}") } }));
        lines.push(doc(i));
    }
    let (status, resp) = s.bulk("/logs/_bulk", &lines).await?;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["errors"], false, "{resp}");
    let items = resp["items"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    assert_eq!(items[3]["index"]["_id"], "id-3");
    assert_eq!(items[3]["index"]["status"], 201);

    // Replaying: `index` is a no-op, `create` a conflict, bad items fail alone.
    let (status, resp) = s
        .bulk(
            "/_bulk",
            &[
                json!({ "index": { "_index": "logs", "_id": "id-1" } }),
                doc(1),
                json!({ "create": { "_index": "logs", "_id": "id-2" } }),
                doc(2),
                json!({ "index": { "_index": "logs", "_id": "bad" } }),
                json!({ "latency_ms": "slow" }),
                json!({ "create": { "_index": "logs", "_id": "id-new" } }),
                doc(30),
            ],
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resp["errors"], true);
    let statuses: Vec<(String, u64)> = resp["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| {
            let (action, r) = it.as_object().unwrap().iter().next().unwrap();
            (action.clone(), r["status"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("index".into(), 200),
            ("create".into(), 409),
            ("index".into(), 400),
            ("create".into(), 201)
        ]
    );
    assert!(resp["items"][2]["index"]["error"]["reason"]
        .as_str()
        .unwrap()
        .contains("latency_ms"));
    let health = s
        .http
        .get(format!("{}/_cat/health", s.base))
        .basic_auth("elastic", Some("s3cret"))
        .send()
        .await?;
    assert_eq!(health.status(), StatusCode::OK);
    assert!(health.text().await?.contains("green"));
    let all = s.search("logs", json!({ "size": 0 })).await?;
    assert_eq!(all["hits"]["total"]["value"], 21);

    // Without the token: 401, for reading as for writing.
    let resp = s
        .http
        .post(format!("{}/logs/_search", s.base))
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = s
        .http
        .post(format!("{}/_bulk", s.base))
        .body("{\"index\":{\"_index\":\"x\"}}\n{}\n")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    s.indexer.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn search_speaks_the_query_dsl() -> Result<()> {
    let s = Server::start(None).await?;
    let mut lines = Vec::new();
    for i in 0..20 {
        lines.push(json!({ "index": { "_id": format!("id-{i}") } }));
        lines.push(doc(i));
    }
    let (status, _) = s.bulk("/logs/_bulk", &lines).await?;
    assert_eq!(status, StatusCode::OK);

    let r = s
        .search(
            "logs",
            json!({ "query": { "bool": {
                "filter": [
                    { "term": { "host.name": "node-1" } },
                    { "range": { "@timestamp": { "gte": "2025-06-01T10:00:05Z", "lt": "2025-06-01T10:00:15Z" } } }
                ],
                "must_not": [ { "match": { "message": "timed" } } ]
            }}}),
        )
        .await?;
    assert_eq!(
        msgs(&r),
        [
            "request 14 ok",
            "request 12 ok",
            "request 8 ok",
            "request 6 ok"
        ],
        "newest first by default"
    );
    assert_eq!(r["hits"]["hits"][0]["_id"], "id-14");
    assert_eq!(r["hits"]["hits"][0]["_index"], "logs");

    for (query, expected) in [
        (json!({ "match_phrase": { "message": "timed out" } }), 4),
        // Numbers in messages are ids, indexed apart from the words (no positions):
        // term, match and phrases with them stay exact.
        (
            json!({ "match_phrase": { "message": "request 15 timed" } }),
            1,
        ),
        (json!({ "match_phrase": { "message": "15 request" } }), 0),
        (json!({ "match": { "message": "15" } }), 1),
        (
            json!({ "match": { "message": { "query": "request 15", "operator": "and" } } }),
            1,
        ),
        (json!({ "term": { "message": "12" } }), 1),
        (
            json!({ "query_string": { "query": "\"request 10 timed out\"" } }),
            1,
        ),
        (json!({ "terms": { "log.level": ["error", "warn"] } }), 4),
        (json!({ "term": { "trace.id": "t7" } }), 1),
        (json!({ "term": { "user.name": "alice" } }), 10),
        (json!({ "range": { "latency_ms": { "gt": 150 } } }), 4),
        (json!({ "exists": { "field": "trace.id" } }), 20),
        (
            json!({ "query_string": { "query": "service.name:fib AND log.level:error" } }),
            4,
        ),
        (
            json!({ "bool": { "should": [ { "term": { "trace.id": "t1" } }, { "term": { "trace.id": "t2" } } ] } }),
            2,
        ),
        (json!({ "match_all": {} }), 20),
    ] {
        let r = s
            .search("logs", json!({ "query": query, "size": 0 }))
            .await?;
        assert_eq!(r["hits"]["total"]["value"], expected, "{query}");
    }
    // Bounds on @timestamp are exact at a document's own time, inclusive or not,
    // as strings or epoch milliseconds (10:00:05Z is 1748772005000).
    for (range, expected) in [
        (
            json!({ "gte": "2025-06-01T10:00:05Z", "lte": "2025-06-01T10:00:15Z" }),
            11,
        ),
        (
            json!({ "gt": "2025-06-01T10:00:05Z", "lte": "2025-06-01T10:00:15Z" }),
            10,
        ),
        (
            json!({ "gte": "2025-06-01T10:00:05Z", "lt": "2025-06-01T10:00:15Z" }),
            10,
        ),
        (
            json!({ "gt": 1748772005000_i64, "lt": 1748772015000_i64 }),
            9,
        ),
        (json!({ "gte": 1748772005000_i64 }), 15),
        (json!({ "lt": "2025-06-01T10:00:00Z" }), 0),
        (
            json!({ "gte": "2025-06-01T09:00:00Z", "lte": "2025-06-01T11:00:00Z" }),
            20,
        ),
        (
            json!({ "gt": "2025-06-01T10:00:15Z", "lt": "2025-06-01T10:00:05Z" }),
            0,
        ),
    ] {
        let body = json!({ "query": { "range": { "@timestamp": range } }, "size": 0 });
        let r = s.search("logs", body).await?;
        assert_eq!(r["hits"]["total"]["value"], expected, "{range}");
    }
    // Newest first with `from`: the pages are the slices of the whole list, and
    // the total counts every match whatever the page.
    let whole = s.search("logs", json!({ "size": 20 })).await?;
    let whole = msgs(&whole);
    assert_eq!(whole[0], "request 19 ok");
    for from in [0, 3, 7, 18, 20] {
        let r = s.search("logs", json!({ "size": 5, "from": from })).await?;
        assert_eq!(r["hits"]["total"]["value"], 20, "from {from}");
        assert_eq!(
            msgs(&r),
            whole[from.min(20)..(from + 5).min(20)],
            "from {from}"
        );
    }

    // `_count`: the same queries, the total only, from a body or `?q=`.
    let count = |index: &str, body: Option<Value>, q: Option<&str>| {
        let mut req = s.http.post(format!("{}/{index}/_count", s.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(q) = q {
            req = req.query(&[("q", q)]);
        }
        req.send()
    };
    let r: Value = count("logs", None, None).await?.json().await?;
    assert_eq!(r["count"], 20, "{r}");
    let body = json!({ "query": { "term": { "log.level": "error" } } });
    let r: Value = count("logs", Some(body), None).await?.json().await?;
    assert_eq!(r["count"], 4, "{r}");
    let r: Value = count("logs", None, Some("host.name:node-1"))
        .await?
        .json()
        .await?;
    assert_eq!(r["count"], 10, "{r}");
    let r: Value = count("other", None, None).await?.json().await?;
    assert_eq!(r["count"], 0, "{r}");
    let resp = count(
        "logs",
        Some(json!({ "query": { "match_all": {} }, "size": 3 })),
        None,
    )
    .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await?;
    assert!(err.to_string().contains("only a query"), "{err}");

    // Another index name selects nothing; wildcards select everything.
    let r = s.search("other", json!({})).await?;
    assert_eq!(r["hits"]["total"]["value"], 0);
    let r = s.search("log*", json!({})).await?;
    assert_eq!(r["hits"]["total"]["value"], 20);

    // Oldest first with search_after, page by page.
    let mut seen = Vec::new();
    let mut after: Option<Value> = None;
    loop {
        let mut body = json!({ "size": 6, "sort": [ { "@timestamp": { "order": "asc" } } ] });
        if let Some(a) = &after {
            body["search_after"] = a.clone();
        }
        let r = s.search("logs", body).await?;
        let hits = r["hits"]["hits"].as_array().unwrap().clone();
        if hits.is_empty() {
            break;
        }
        seen.extend(msgs(&r));
        after = Some(hits.last().unwrap()["sort"].clone());
    }
    assert_eq!(seen.len(), 20);
    assert_eq!(seen[0], "request 0 timed out");
    assert_eq!(seen[19], "request 19 ok");

    // A bad query is a 400 that says why.
    let resp = s
        .http
        .post(format!("{}/logs/_search", s.base))
        .json(&json!({ "query": { "fuzzy": { "message": "x" } } }))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await?.contains("fuzzy"));
    s.indexer.shutdown().await;
    Ok(())
}

/// The `error` object Elasticsearch clients parse: `type` and `reason` at the top
/// and in `root_cause`, plus `status`.
fn assert_es_error(status: StatusCode, body: &Value, want_status: u16, kind: &str, says: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["status"], want_status, "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert_eq!(body["error"]["root_cause"][0]["type"], kind, "{body}");
    let reason = body["error"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(says), "{body}");
    assert_eq!(body["error"]["root_cause"][0]["reason"], reason, "{body}");
}

#[tokio::test]
async fn es_endpoints_answer_errors_in_elasticsearch_shape() -> Result<()> {
    let s = Server::start(Some("s3cret")).await?;
    let post = |path: &str, body: String| {
        s.http
            .post(format!("{}{path}", s.base))
            .basic_auth("elastic", Some("s3cret"))
            .header("content-type", "application/json")
            .body(body)
    };
    let read = |resp: reqwest::Response| async move {
        let status = resp.status();
        let headers = resp.headers().clone();
        anyhow::Ok((status, headers, resp.json::<Value>().await?))
    };

    let (status, _, body) = read(
        post(
            "/logs/_search",
            json!({ "query": { "fuzzy": { "message": "x" } } }).to_string(),
        )
        .send()
        .await?,
    )
    .await?;
    assert_es_error(status, &body, 400, "parsing_exception", "fuzzy");

    let (status, _, body) = read(post("/logs/_search", "{not json".into()).send().await?).await?;
    assert_es_error(status, &body, 400, "parsing_exception", "not JSON");

    let (status, _, body) =
        read(post("/logs/_search?size=lots", "{}".into()).send().await?).await?;
    assert_es_error(status, &body, 400, "illegal_argument_exception", "lots");

    let (status, _, body) =
        read(post("/_bulk", "not an action\n{}\n".into()).send().await?).await?;
    assert_es_error(status, &body, 400, "parsing_exception", "bulk line 1");

    let (status, headers, body) = read(
        s.http
            .post(format!("{}/logs/_bulk", s.base))
            .body("{\"index\":{}}\n{}\n")
            .send()
            .await?,
    )
    .await?;
    assert_es_error(status, &body, 401, "security_exception", "token");
    assert!(headers.contains_key("www-authenticate"));

    // The native API keeps its own plain error body.
    let resp = s
        .http
        .get(format!("{}/api/v1/search", s.base))
        .basic_auth("elastic", Some("s3cret"))
        .query(&[("q", "msg:(")])
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await?;
    assert!(body["error"].is_string(), "{body}");
    s.indexer.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn search_highlights_the_message_like_elasticsearch() -> Result<()> {
    let s = Server::start(None).await?;
    let mut lines = Vec::new();
    for i in 0..10 {
        lines.push(json!({ "index": {} }));
        lines.push(doc(i));
    }
    lines.push(json!({ "index": {} }));
    lines.push(json!({
        "@timestamp": "2025-06-01T11:00:00Z",
        "message": "<b>upstream</b> timed out & gave up",
        "service": { "name": "web" },
    }));
    s.bulk("/logs/_bulk", &lines).await?;

    let r = s
        .search(
            "logs",
            json!({
                "query": { "match": { "message": "timed" } },
                "highlight": { "fields": { "message": {} } },
            }),
        )
        .await?;
    let got: Vec<Value> = r["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["highlight"].clone())
        .collect();
    assert_eq!(
        got,
        vec![
            json!({ "message": ["&lt;b&gt;upstream&lt;/b&gt; <em>timed</em> out &amp; gave up"] }),
            json!({ "message": ["request 5 <em>timed</em> out"] }),
            json!({ "message": ["request 0 <em>timed</em> out"] }),
        ]
    );

    // Custom tags, a query_string, and a hit matched by a keyword alone: no
    // `highlight` on it, as in Elasticsearch.
    let r = s
        .search(
            "logs",
            json!({
                "size": 2,
                "query": { "query_string": { "query": "service.name:fib AND (ok OR message:out)" } },
                "highlight": {
                    "pre_tags": ["<mark>"], "post_tags": ["</mark>"],
                    "fields": [{ "message": { "number_of_fragments": 0 } }],
                },
            }),
        )
        .await?;
    assert_eq!(
        r["hits"]["hits"][0]["highlight"]["message"],
        json!(["request 9 <mark>ok</mark>"])
    );
    let r = s
        .search(
            "logs",
            json!({
                "size": 1,
                "query": { "term": { "service.name": "web" } },
                "highlight": { "fields": { "message": {} } },
            }),
        )
        .await?;
    assert_eq!(r["hits"]["hits"].as_array().unwrap().len(), 1);
    assert!(r["hits"]["hits"][0].get("highlight").is_none(), "{r}");
    // Without `highlight`, nothing changes.
    let r = s
        .search(
            "logs",
            json!({ "query": { "match": { "message": "timed" } } }),
        )
        .await?;
    assert!(r["hits"]["hits"][0].get("highlight").is_none(), "{r}");
    s.indexer.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn aggregations_match_the_data() -> Result<()> {
    let s = Server::start(None).await?;
    let mut lines = Vec::new();
    for i in 0..20 {
        lines.push(json!({ "index": {} }));
        lines.push(doc(i));
    }
    s.bulk("/logs/_bulk", &lines).await?;
    let r = s
        .search(
            "logs",
            json!({
                "size": 0,
                "query": { "query_string": { "query": "*" } },
                "aggs": {
                    "per_10s": { "date_histogram": { "field": "@timestamp", "fixed_interval": "10s" } },
                    "hosts": { "terms": { "field": "host.name", "size": 1 } },
                    "lat": { "percentiles": { "field": "latency_ms", "percents": [50, 99] } },
                    "avg_lat": { "avg": { "field": "latency_ms" } }
                }
            }),
        )
        .await?;
    let aggs = &r["aggregations"];
    let buckets = aggs["per_10s"]["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 2, "{aggs}");
    assert_eq!(buckets[0]["doc_count"], 10);
    assert_eq!(buckets[0]["key_as_string"], "2025-06-01T10:00:00.000Z");
    assert_eq!(aggs["hosts"]["buckets"].as_array().unwrap().len(), 1);
    assert_eq!(aggs["hosts"]["buckets"][0]["doc_count"], 10);
    assert_eq!(aggs["hosts"]["sum_other_doc_count"], 10);
    assert_eq!(aggs["lat"]["values"]["50.0"], 90.0);
    assert_eq!(aggs["lat"]["values"]["99.0"], 190.0);
    assert_eq!(aggs["avg_lat"]["value"], 95.0);
    s.indexer.shutdown().await;
    Ok(())
}

/// Documents of three days land in three partitions; `_id` dedup, totals,
/// `search_after` paging and the returned `_id`s work across them.
#[tokio::test]
async fn bulk_and_search_span_day_partitions() -> Result<()> {
    let s = Server::start(None).await?;
    let mut lines = Vec::new();
    for i in 0..12u64 {
        let mut d = doc(i);
        d["@timestamp"] = json!(format!("2025-06-0{}T10:00:{:02}Z", 1 + i % 3, i));
        lines.push(json!({ "index": { "_id": format!("day-{i}") } }));
        lines.push(d);
    }
    let (status, resp) = s.bulk("/logs/_bulk", &lines).await?;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let (_, again) = s.bulk("/logs/_bulk", &lines).await?;
    let created = again["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["index"]["status"] == 201)
        .count();
    assert_eq!(created, 0, "ids are found in every partition: {again}");

    let mut seen = Vec::new();
    let mut after: Option<Value> = None;
    for _ in 0..10 {
        let mut body = json!({ "size": 5, "sort": [ { "@timestamp": { "order": "asc" } } ] });
        if let Some(a) = &after {
            body["search_after"] = a.clone();
        }
        let r = s.search("logs", body).await?;
        assert_eq!(r["hits"]["total"]["value"], 12);
        let hits = r["hits"]["hits"].as_array().unwrap().clone();
        if hits.is_empty() {
            break;
        }
        after = Some(hits.last().unwrap()["sort"].clone());
        seen.extend(hits);
    }
    let ids: Vec<&str> = seen.iter().map(|h| h["_id"].as_str().unwrap()).collect();
    let expected: Vec<String> = [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
        .iter()
        .map(|i| format!("day-{i}"))
        .collect();
    assert_eq!(ids, expected);
    s.indexer.shutdown().await;
    Ok(())
}

/// Issue 17: elasticsearch-py 8 got a 404 from `GET /` and refused every answer
/// without `X-Elastic-Product: Elasticsearch`; shippers ask `GET /` and their setup
/// calls before they send anything.
#[tokio::test]
async fn clients_find_an_elasticsearch_at_the_root_and_under_the_prefix() -> Result<()> {
    let s = Server::start(Some("s3cret")).await?;
    for base in [
        s.base.clone(),
        format!("{}/es", s.base),
        format!("{}/es/", s.base),
    ] {
        let resp = s.http.get(&base).bearer_auth("s3cret").send().await?;
        assert_eq!(resp.status(), StatusCode::OK, "{base}");
        assert_eq!(resp.headers()["x-elastic-product"], "Elasticsearch");
        let v: Value = resp.json().await?;
        assert!(
            v["version"]["number"].as_str().unwrap().starts_with("8."),
            "{v}"
        );
        assert_eq!(v["version"]["build_flavor"], "default");
        assert_eq!(v["tagline"], "You Know, for Search");
        for key in ["name", "cluster_name", "cluster_uuid"] {
            assert!(v[key].is_string(), "{key}: {v}");
        }
        let head = s.http.head(&base).bearer_auth("s3cret").send().await?;
        assert_eq!(head.status(), StatusCode::OK, "HEAD {base}");
    }
    // Closed by default, like the rest of the API, and the refusal is still
    // Elasticsearch's (the clients read the header on every answer).
    let resp = s.http.get(&s.base).send().await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["x-elastic-product"], "Elasticsearch");
    Ok(())
}

#[tokio::test]
async fn every_elasticsearch_answer_carries_the_product_header() -> Result<()> {
    let s = Server::start(Some("s3cret")).await?;
    let (status, _) = s
        .bulk("/logs/_bulk", &[json!({ "index": {} }), doc(1)])
        .await?;
    assert_eq!(status, StatusCode::OK);
    for prefix in ["", "/es"] {
        let cases = [
            (
                s.http
                    .post(format!("{}{prefix}/_search", s.base))
                    .json(&json!({})),
                200,
            ),
            (s.http.get(format!("{}{prefix}/logs/_count", s.base)), 200),
            // A bad query (the refused token follows).
            (
                s.http
                    .post(format!("{}{prefix}/_search", s.base))
                    .json(&json!({ "query": { "nope": {} } })),
                400,
            ),
        ];
        for (req, want) in cases {
            let resp = req.basic_auth("elastic", Some("s3cret")).send().await?;
            assert_eq!(resp.status().as_u16(), want, "{prefix}");
            assert_eq!(resp.headers()["x-elastic-product"], "Elasticsearch");
        }
        let resp = s
            .http
            .post(format!("{}{prefix}/_bulk", s.base))
            .bearer_auth("wrong")
            .body("{}\n")
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()["x-elastic-product"], "Elasticsearch");
    }
    Ok(())
}

#[tokio::test]
async fn shipper_startup_calls_are_answered_or_accepted() -> Result<()> {
    let s = Server::start(Some("s3cret")).await?;
    let get = |path: &str| {
        s.http
            .get(format!("{}{path}", s.base))
            .bearer_auth("s3cret")
            .send()
    };
    let v: Value = get("/_license?human=false").await?.json().await?;
    assert_eq!(v["license"]["status"], "active", "{v}");
    assert_eq!(v["license"]["type"], "basic", "{v}");
    let v: Value = get("/_xpack?human=false").await?.json().await?;
    assert_eq!(v["license"]["mode"], "basic", "{v}");
    assert_eq!(v["features"]["ilm"]["available"], true, "{v}");
    for path in [
        "/_nodes",
        "/_nodes/http",
        "/_nodes/_all/http",
        "/es/_nodes/http",
    ] {
        let v: Value = get(path).await?.json().await?;
        let nodes = v["nodes"].as_object().unwrap();
        assert_eq!(nodes.len(), 1, "{path}: {v}");
        let node = nodes.values().next().unwrap();
        let addr = s.base.trim_start_matches("http://");
        assert_eq!(node["http"]["publish_address"], addr, "{v}");
        assert!(node["version"].as_str().unwrap().starts_with("8."));
    }
    let resp = get("/_cluster/health").await?;
    assert_eq!(resp.headers()["x-elastic-product"], "Elasticsearch");
    let v: Value = resp.json().await?;
    assert_eq!(v["status"], "green", "{v}");
    assert_eq!(v["number_of_nodes"], 1);

    // Setup calls: a PUT is acknowledged, a read finds nothing (nothing is kept).
    for api in [
        "_index_template/filebeat-8.15.0",
        "_component_template/logs-settings",
        "_ilm/policy/filebeat",
        "_data_stream/logs-app-default",
        "_template/logstash",
        "_ingest/pipeline/filebeat-nginx",
    ] {
        for prefix in ["", "/es"] {
            let url = format!("{}{prefix}/{api}", s.base);
            let head = s.http.head(&url).bearer_auth("s3cret").send().await?;
            assert_eq!(head.status(), StatusCode::NOT_FOUND, "HEAD {url}");
            assert_eq!(head.headers()["x-elastic-product"], "Elasticsearch");
            let put = s
                .http
                .put(&url)
                .bearer_auth("s3cret")
                .json(&json!({ "index_patterns": ["x-*"] }))
                .send()
                .await?;
            assert_eq!(put.status(), StatusCode::OK, "PUT {url}");
            let v: Value = put.json().await?;
            assert_eq!(v["acknowledged"], true, "{url}: {v}");
            let got = s.http.get(&url).bearer_auth("s3cret").send().await?;
            assert_eq!(got.status(), StatusCode::NOT_FOUND, "GET {url}");
            let v: Value = got.json().await?;
            assert_eq!(v["status"], 404, "{v}");
        }
    }
    // Closed by default like the rest of the API.
    let resp = s.http.get(format!("{}/_license", s.base)).send().await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}

/// Issue 17: a client that indexes a document and searches it gets back the fields
/// it sent (nested objects, dotted keys, arrays, odd types), not an ECS rendering
/// with `task` and `stream` added; the document is still indexed by its mapping.
#[tokio::test]
async fn hits_return_the_source_as_sent() -> Result<()> {
    let s = Server::start(Some("s3cret")).await?;
    let sent = json!({
        "@timestamp": "2025-06-01T10:00:00.123Z",
        "message": "payment failed",
        "host": { "name": "node-1", "ip": ["10.0.0.1", "10.0.0.2"] },
        "user.name": "alice",
        "labels": { "env": "prod", "retry": 3, "ok": false, "none": null },
        "log": { "level": "ERROR", "file": { "path": "/var/log/app.log" } },
        "ecs": { "version": "8.11.0" },
    });
    // What a hit of a native record looks like: kept as is by the mapping alone.
    let rendered = json!({
        "@timestamp": "2025-06-01T10:00:01Z",
        "message": "ok",
        "host": { "name": "node-2" },
        "service": { "name": "fib" },
        "log": { "level": "info" },
        "task": "fib.1",
        "stream": "stdout",
    });
    let (status, resp) = s
        .bulk(
            "/logs/_bulk",
            &[
                json!({ "index": { "_id": "sent" } }),
                sent.clone(),
                json!({ "index": { "_id": "rendered" } }),
                rendered.clone(),
            ],
        )
        .await?;
    assert_eq!((status, &resp["errors"]), (StatusCode::OK, &json!(false)));
    let hits = s
        .search("logs", json!({ "sort": [{ "@timestamp": "asc" }] }))
        .await?;
    let sources: Vec<&Value> = hits["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["_source"])
        .collect();
    assert_eq!(sources, [&sent, &rendered]);
    // Searched through its mapping: ECS names, and the rest under its dotted name.
    for q in [
        json!({ "query_string": { "query": "host.name:node-1 AND log.level:error" } }),
        json!({ "term": { "labels.env": "prod" } }),
        json!({ "term": { "user.name": "alice" } }),
        // In a query string too, under the names the client sent.
        json!({ "query_string": { "query": "user.name:alice AND labels.env:prod" } }),
        json!({ "query_string": { "query": "labels.retry:3 AND message:payment" } }),
    ] {
        let r = s.search("logs", json!({ "query": q })).await?;
        assert_eq!(r["hits"]["total"]["value"], 1, "{q}: {r}");
        assert_eq!(r["hits"]["hits"][0]["_id"], "sent", "{q}");
    }
    Ok(())
}

/// Issue 17: a path the API does not serve, under the prefix or anywhere on the
/// indexer's own port, answers an Elasticsearch 404 with the product header (it was
/// an empty 404 without it, which the official clients take for "not
/// Elasticsearch"); a served path with the wrong method a 405 in the same shape.
#[tokio::test]
async fn unknown_paths_are_elasticsearch_404s() -> Result<()> {
    let s = Server::start(Some("s3cret")).await?;
    for (method, path, status, says) in [
        (
            "GET",
            "/es/logs/_mapping",
            404,
            "no handler found for uri [/es/logs/_mapping] and method [GET]",
        ),
        ("POST", "/es/logs/_update/1", 404, "[/es/logs/_update/1]"),
        ("GET", "/logs/_mapping", 404, "[/logs/_mapping]"),
        ("POST", "/_refresh", 404, "[/_refresh]"),
        ("GET", "/es/_bulk", 405, "[/es/_bulk] and method [GET]"),
        ("DELETE", "/_search", 405, "[/_search] and method [DELETE]"),
    ] {
        let resp = s
            .http
            .request(method.parse()?, format!("{}{path}", s.base))
            .basic_auth("elastic", Some("s3cret"))
            .send()
            .await?;
        assert_eq!(
            resp.headers()["x-elastic-product"],
            "Elasticsearch",
            "{path}"
        );
        let kind = if status == 404 {
            "resource_not_found_exception"
        } else {
            "illegal_argument_exception"
        };
        let got = resp.status();
        assert_es_error(got, &resp.json().await?, status, kind, says);
        // Closed like the rest: without a token, nothing is said about the path.
        // (A 405 says only which methods a documented path takes, token or not.)
        let resp = s
            .http
            .request(method.parse()?, format!("{}{path}", s.base))
            .send()
            .await?;
        let want = if status == 405 { 405 } else { 401 };
        assert_eq!(resp.status().as_u16(), want, "{path}");
        assert_eq!(
            resp.headers()["x-elastic-product"],
            "Elasticsearch",
            "{path}"
        );
    }
    // The native API and its own errors are untouched.
    let resp = s
        .http
        .get(format!("{}/api/v1/search", s.base))
        .basic_auth("elastic", Some("s3cret"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    Ok(())
}

/// Issue 17: the single-document API a client tries first (`index`, `create`, `get`)
/// works as a one-item bulk: indexed with its mapping, dedup by `_id`, searchable
/// once answered, and read back as sent.
#[tokio::test]
async fn single_documents_are_indexed_and_read_back() -> Result<()> {
    let s = Server::start(Some("s3cret")).await?;
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let req = s
            .http
            .request(method, format!("{}{path}", s.base))
            .basic_auth("elastic", Some("s3cret"));
        match body {
            // Pretty-printed, as a client may send it.
            Some(b) => req
                .header("content-type", "application/json")
                .body(serde_json::to_string_pretty(&b).unwrap()),
            None => req,
        }
    };
    let doc = json!({ "message": "one document", "user": { "name": "alice" } });
    let resp = send(reqwest::Method::PUT, "/logs/_doc/d1", Some(doc.clone()))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value = resp.json().await?;
    assert_eq!((&v["_id"], &v["result"]), (&json!("d1"), &json!("created")));
    // Searchable once answered.
    let r = s
        .search("logs", json!({ "query": { "term": { "_id": "d1" } } }))
        .await?;
    assert_eq!(r["hits"]["hits"][0]["_source"], doc);
    let resp = send(reqwest::Method::GET, "/es/logs/_doc/d1", None)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await?;
    assert_eq!((&v["found"], &v["_source"]), (&json!(true), &doc));
    let resp = send(reqwest::Method::HEAD, "/logs/_doc/d1", None)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    // Again under the same id: kept as it was (append-only), or a conflict.
    let resp = send(
        reqwest::Method::PUT,
        "/logs/_doc/d1",
        Some(json!({ "message": "x" })),
    )
    .send()
    .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await?["result"], "noop");
    let resp = send(
        reqwest::Method::PUT,
        "/logs/_create/d1",
        Some(json!({ "message": "x" })),
    )
    .send()
    .await?;
    let status = resp.status();
    assert_es_error(
        status,
        &resp.json().await?,
        409,
        "version_conflict_engine_exception",
        "already exists",
    );
    // Without an id one is made; a missing one is Elasticsearch's 404.
    let resp = send(
        reqwest::Method::POST,
        "/logs/_doc",
        Some(json!({ "message": "two" })),
    )
    .send()
    .await?;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp.json::<Value>().await?["_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!id.is_empty());
    let resp = send(reqwest::Method::GET, "/logs/_doc/nope", None)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.json::<Value>().await?["found"], false);
    // Writing needs the agent role (or admin), reading the read role.
    let resp = s
        .http
        .put(format!("{}/logs/_doc/d2", s.base))
        .json(&json!({ "message": "m" }))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let count = s.search("logs", json!({ "size": 0 })).await?;
    assert_eq!(count["hits"]["total"]["value"], 2);
    Ok(())
}
