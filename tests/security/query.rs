//! Security suite: what one query can cost. The reproductions against the real
//! `sandtrail up`: 3,000 `NOT`s ended the whole process with a stack overflow (native
//! search and `query_string` alike), and 24 nested parentheses held a core for 13 s
//! (Tantivy 0.25's grammar parsed every group twice; 0.27 fixed it, and the shape
//! guard bounds the depth before parsing).

use crate::auth::Up;
use std::time::{Duration, Instant};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn status_of(req: reqwest::RequestBuilder) -> (u16, String, Duration) {
    let started = Instant::now();
    let resp = req.send().await.expect("the process answers");
    let status = resp.status().as_u16();
    (
        status,
        resp.text().await.unwrap_or_default(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_nots_answer_400_and_the_process_lives() {
    // Regression (issue 15): "thread 'tokio-rt-worker' has overflowed its stack",
    // and scheduler, indexer, UI, router and agents were gone.
    let up = Up::start(&[]).unwrap();
    let (web, token) = (up.url.clone(), up.token("admin"));
    let http = client();
    let q = format!("{}a", "NOT ".repeat(3000));
    let (status, body, _) = status_of(
        http.get(format!("{web}/api/v1/search"))
            .bearer_auth(&token)
            .query(&[("q", q.as_str())]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("limit") || body.contains("at most"), "{body}");
    let dsl = serde_json::json!({"query": {"query_string": {"query": q}}});
    let (status, body, _) = status_of(
        http.post(format!("{web}/_search"))
            .bearer_auth(&token)
            .json(&dsl),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = status_of(http.get(format!("{web}/healthz"))).await;
    assert_eq!(status, 200, "the process must still be there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_eight_nested_parentheses_answer_within_100_ms() {
    // Regression (issue 15): 24 levels held a core for 13.3 s, doubling per level.
    let up = Up::start(&[]).unwrap();
    let (web, token) = (up.url.clone(), up.token("admin"));
    let http = client();
    let q = format!("{}a{}", "(".repeat(28), ")".repeat(28));
    // The first request of a fresh process opens readers and warms caches: the
    // bound is on the query, so it is measured on a second, identical request.
    for round in 0..2 {
        let (status, body, took) = status_of(
            http.get(format!("{web}/api/v1/search"))
                .bearer_auth(&token)
                .query(&[("q", q.as_str())]),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if round == 1 {
            assert!(took < Duration::from_millis(100), "took {took:?}");
        }
    }
    let dsl = serde_json::json!({"query": {"query_string": {"query": q}}});
    let (status, body, took) = status_of(
        http.post(format!("{web}/_search"))
            .bearer_auth(&token)
            .json(&dsl),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_millis(100), "took {took:?}");
}
