//! Both query languages fuzzed against a live indexer over HTTP (issue 15): the
//! native `q` of `/api/v1/search` and the Elasticsearch query DSL of `/_search`,
//! with random token soups, adversarial shapes (thousands of `NOT`, hundreds of
//! nested parentheses, unclosed groups) and random nested `bool` trees with garbage
//! leaves. Every request must get an answer (200, 400 for a bad query, 504 for a
//! spent time budget; never a 5xx of a crash) within a bound, and the server must
//! still answer afterwards.

mod common;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use protocol::{LogRecord, Stream, TaskMeta};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// What one request may take here. The budget of the indexer is 10 s; every query
/// over this small index should be answered far sooner, whatever its shape.
const BOUND: Duration = Duration::from_secs(3);

fn native() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "(",
        ")",
        "NOT ",
        "AND ",
        "OR ",
        "-",
        "+",
        "\"",
        "msg:",
        "app:",
        "level:",
        "host:",
        "latency_ms:",
        "status:",
        "*",
        "?",
        "~2",
        "^3",
        "[",
        "]",
        "{",
        "}",
        " TO ",
        "a",
        "error",
        "fib*",
        ":",
        "\\",
        "/",
        "/er.*r/",
        " ",
        "ts:>",
        "2025-06-01",
        ">=",
        "<",
        "status:[500 TO 599]",
        "IN [a b]",
        "'",
        "🙂",
        "\u{0}",
        "\t",
    ]);
    prop_oneof![
        4 => prop::collection::vec(token, 0..60).prop_map(|v| v.concat()),
        1 => (1usize..400).prop_map(|n| format!("{}a{}", "(".repeat(n), ")".repeat(n))),
        1 => (1usize..4000).prop_map(|n| format!("{}a", "NOT ".repeat(n))),
        1 => (1usize..400).prop_map(|n| "(".repeat(n)),
        1 => (1usize..200).prop_map(|n| format!("{}a", "-(".repeat(n))),
        1 => any::<String>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z*?.()\\[\\]{}+\\\\|^$ ]{0,20}",
        any::<String>(),
        Just(".*.*.*.*.*.*.*.*.*.*x".to_string()),
        Just("(a|aa)*(a|aa)*(a|aa)*b".to_string()),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        native().prop_map(|q| json!({"query_string": {"query": q}})),
        text().prop_map(|t| json!({"match": {"msg": t}})),
        text().prop_map(|t| json!({"match_phrase": {"message": t}})),
        text().prop_map(|t| json!({"term": {"app": t}})),
        text().prop_map(|t| json!({"wildcard": {"msg": t}})),
        text().prop_map(|t| json!({"regexp": {"msg": t}})),
        text().prop_map(|t| json!({"prefix": {"msg": t}})),
        Just(json!({"match_all": {}})),
        Just(json!({"exists": {"field": "latency_ms"}})),
        (any::<i64>(), any::<f64>())
            .prop_map(|(a, b)| json!({"range": {"latency_ms": {"gte": a, "lt": b}}})),
        text().prop_map(|t| json!({"range": {"@timestamp": {"gte": t, "lte": "now"}}})),
        any::<i64>().prop_map(|n| json!(n)),
        Just(Value::Null),
        Just(json!([])),
        text().prop_map(|t| json!({ t: {} })),
    ]
}

fn dsl() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(8, 96, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| json!({"bool": {"must": v}})),
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| json!({"bool": {"should": v, "minimum_should_match": 1}})),
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| json!({"bool": {"must_not": v}})),
            inner.clone().prop_map(|q| json!({"bool": {"filter": q}})),
            inner.prop_map(|q| json!({"constant_score": {"filter": q}})),
        ]
    })
}

fn records(n: usize) -> Vec<LogRecord> {
    let now = chrono::Utc::now();
    (0..n)
        .map(|i| {
            let meta = TaskMeta {
                host: format!("node-{}", i % 3),
                app: ["fib", "web", "db"][i % 3].into(),
                task: format!("t{}", i % 5),
                instance: 0,
                ports: vec![],
            };
            let msg = format!(
                "GET /fib/{i} error a aa aaa status={} took {}ms",
                200 + i % 4 * 100,
                i % 97
            );
            let mut r = LogRecord::new(
                now - chrono::Duration::seconds((n - i) as i64),
                &meta,
                Stream::Stdout,
                &msg,
            );
            r.latency_ms = Some((i % 97) as f64);
            r.source = "fuzz".into();
            r.offset = i as u64 + 1;
            r
        })
        .collect()
}

/// Accepted answers: a result, a bad query named as such, or a spent budget.
fn check(what: &str, status: u16, body: &str, took: Duration) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(status, 200 | 400 | 504),
        "{what}: status {status}: {body}"
    );
    prop_assert!(took < BOUND, "{what}: took {took:?}");
    Ok(())
}

#[test]
fn both_query_languages_always_answer_within_the_bound() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(common::serve(None, 64 << 20)).unwrap();
    rt.block_on(server.indexer.ingest(records(3000))).unwrap();
    let (base, http) = (server.base.clone(), server.http.clone());
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&native(), |q| {
            let started = Instant::now();
            let (status, body) = rt.block_on(async {
                let r = http
                    .get(format!("{base}/api/v1/search"))
                    .query(&[("q", q.as_str()), ("limit", "20")])
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            });
            check("native", status, &body, started.elapsed())
        })
        .unwrap();
    runner
        .run(&dsl(), |query| {
            let started = Instant::now();
            let body = json!({"query": query, "size": 5,
                "aggs": {"per_app": {"terms": {"field": "app"}}}});
            let (status, text) = rt.block_on(async {
                let r = http
                    .post(format!("{base}/_search"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            });
            check("dsl", status, &text, started.elapsed())
        })
        .unwrap();
    // And the process is still there to answer a plain search.
    let status = rt.block_on(async {
        http.get(format!("{base}/api/v1/search"))
            .query(&[("q", "error")])
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
}

#[test]
fn a_search_past_its_budget_is_answered_504_saying_so() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ix = indexer::Indexer::open(indexer::IndexerConfig {
        data_dir: dir.path().to_path_buf(),
        writer_memory_bytes: 32 << 20,
        // Spent before the first block of documents is looked at.
        search_timeout: Duration::from_nanos(1),
        ..indexer::IndexerConfig::default()
    })
    .unwrap();
    rt.block_on(ix.ingest(records(5000))).unwrap();
    let err = rt
        .block_on(ix.search(indexer::search::SearchRequest {
            q: "error".into(),
            limit: 10,
            ..Default::default()
        }))
        .unwrap_err();
    assert_eq!(err.status(), axum::http::StatusCode::GATEWAY_TIMEOUT);
    assert!(err.to_string().contains("time budget"), "{err}");
}
